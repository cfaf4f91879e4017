"""The evaluation harness (coviax_research.evaluate) and ``coviax eval --quick`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coviax.cli import main
from coviax_research.eval_metrics import case_metrics, dice, summarise
from coviax_research.eval_report import format_table
from coviax_research.evaluate import QUICK_SUITE, SUITE
from coviax.labels import Label
from coviax_research.phantom import EVAL_SEEDS, TRAIN_SEED_RANGE
from coviax_research.stats import bland_altman, icc2_1


def toy_truth():
    """A 10 x 10 x 10 lung (right half 1, left half 2) with 100 GGO and 50 consolidation voxels."""
    lungs = np.zeros((12, 12, 12), np.uint8)
    lungs[1:11, 1:11, 1:6] = 1
    lungs[1:11, 1:11, 6:11] = 2
    truth = np.where(lungs > 0, np.uint8(Label.HEALTHY_LUNG), np.uint8(0))
    truth[1:5, 1:6, 1:6] = Label.GGO  # 100 voxels
    truth[6:8, 1:6, 6:11] = Label.CONSOLIDATION  # 50 voxels
    truth[9, 9, 9] = Label.VESSEL
    return truth, lungs


def test_suite_uses_evaluation_seeds_only():
    assert len(SUITE) == 12
    assert all(c.seed in EVAL_SEEDS and c.seed not in TRAIN_SEED_RANGE for c in SUITE + QUICK_SUITE)
    assert len({c.seed for c in SUITE}) == 12
    assert [c.severity for c in SUITE].count("none") == 3
    assert {c.severity for c in SUITE} == {"none", "mild", "moderate", "severe"}
    assert {c.noise_sigma_hu for c in SUITE} == {0.0, 25.0}
    assert len(QUICK_SUITE) == 2


def test_perfect_prediction_scores_one_and_zero_error():
    truth, lungs = toy_truth()
    m = case_metrics(truth.copy(), truth, lungs, voxel_ml=0.5)
    assert m["dice_ggo"] == m["dice_consolidation"] == m["dice_all"] == 1.0
    assert all(v == 0 for v in m["ratio_error_pp"].values())
    assert all(v == 0 for v in m["volume_error_ml"].values())
    assert m["fp_lesion_ml"] == 0
    assert m["true_ratios_pct"] == pytest.approx({"all": 15.0, "ggo": 10.0, "consolidation": 5.0})


def test_wrong_prediction_gives_the_known_values():
    truth, lungs = toy_truth()
    pred = np.where(lungs > 0, np.uint8(Label.HEALTHY_LUNG), np.uint8(0))
    pred[3:7, 1:6, 1:6] = Label.GGO  # 100 voxels, 50 of them on the true GGO
    pred[6:8, 1:6, 6:11] = Label.GGO  # the true consolidation called GGO (50)
    pred[9, 1:6, 6:11] = Label.CONSOLIDATION  # 25 false consolidation voxels
    m = case_metrics(pred, truth, lungs, voxel_ml=0.5)
    # GGO: pred 150, truth 100, overlap 50 -> 2*50/250
    assert m["dice_ggo"] == pytest.approx(0.4)
    assert m["dice_consolidation"] == 0.0
    # all lesions: pred 175, truth 150, overlap 50 (GGO) + 50 (consolidation called GGO) = 100
    assert m["dice_all"] == pytest.approx(200 / 325)
    assert m["pred_ratios_pct"] == pytest.approx({"all": 17.5, "ggo": 15.0, "consolidation": 2.5})
    assert m["ratio_error_pp"] == pytest.approx({"all": 2.5, "ggo": 5.0, "consolidation": -2.5})
    assert m["volume_error_ml"] == pytest.approx({"ggo": 25.0, "consolidation": -12.5})
    assert m["fp_lesion_ml"] == pytest.approx(75 * 0.5)  # 50 GGO + 25 consolidation outside the true lesions


def test_end_to_end_ratio_uses_the_predicted_lung():
    truth, lungs = toy_truth()
    # the product's lung mask lost the first lung slice (z = 1: 100 voxels, 25 of them true GGO) and the
    # engine, running inside it, finds every lesion voxel it can still see
    pred_lung = lungs > 0
    pred_lung[1] = False
    pred = np.where(pred_lung, truth, np.uint8(0))
    m = case_metrics(pred, truth, lungs, voxel_ml=0.5, pred_lung=pred_lung)
    # predicted VRall over the 900-voxel predicted lung: (75 + 50) / 900; true over the true 1000: 150 / 1000
    assert m["pred_ratios_pct"]["all"] == pytest.approx(100 * 125 / 900)
    assert m["true_ratios_pct"]["all"] == pytest.approx(15.0)
    assert m["ratio_error_pp"]["all"] == pytest.approx(100 * 125 / 900 - 15.0)
    assert m["dice_ggo"] == pytest.approx(2 * 75 / 175)
    assert m["volume_error_ml"]["ggo"] == pytest.approx(-25 * 0.5)
    # a lung mask spilling outside the true lung widens the scored box: lesions called there count
    spill = np.zeros_like(pred_lung)
    spill[1:11, 1:11, 11] = True
    pred2 = truth.copy()
    pred2[1:11, 1:11, 11] = Label.GGO
    m2 = case_metrics(pred2, truth, lungs, voxel_ml=0.5, pred_lung=(lungs > 0) | spill)
    assert m2["fp_lesion_ml"] == pytest.approx(100 * 0.5)
    assert m2["pred_ratios_pct"]["ggo"] == pytest.approx(100 * 200 / 1100)


def test_dice_is_undefined_without_truth():
    empty = np.zeros((3, 3, 3), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert dice(some, empty) is None and dice(empty, empty) is None
    assert dice(empty, some) == 0.0


def test_summary_uses_coviax_stats():
    true = [0.0, 0.0, 5.0, 12.0, 30.0]
    pred = [1.0, 2.5, 4.0, 15.0, 33.0]
    cases = []
    for i, (t, p) in enumerate(zip(true, pred)):
        cases.append({
            "severity": "none" if t == 0 else "moderate", "seconds": 2.0,
            "dice_ggo": None if t == 0 else 0.5, "dice_consolidation": None, "dice_all": None if t == 0 else 0.6 + i / 100,
            "pred_ratios_pct": {"all": p, "ggo": p, "consolidation": 0.0},
            "true_ratios_pct": {"all": t, "ggo": t, "consolidation": 0.0},
            "ratio_error_pp": {"all": p - t, "ggo": p - t, "consolidation": 0.0},
            "volume_error_ml": {"ggo": 10 * (p - t), "consolidation": 0.0},
            "fp_lesion_ml": 7.0 * (t == 0) + 1.0,
        })
    s = summarise(cases)
    assert s["icc_vr_all"]["icc"] == pytest.approx(icc2_1(np.column_stack([pred, true])).icc)
    ba = bland_altman(pred, true)
    assert s["bland_altman_vr_all"]["bias"] == pytest.approx(ba.bias)
    assert s["bland_altman_vr_all"]["loa_high"] == pytest.approx(ba.loa_high)
    assert s["dice_ggo_mean"] == 0.5 and s["dice_consolidation_mean"] is None
    assert s["dice_all_mean"] == pytest.approx(np.mean([0.62, 0.63, 0.64]))
    assert s["abs_ratio_error_pp_mean"]["all"] == pytest.approx(np.mean(np.abs(np.subtract(pred, true))))
    assert s["fp_lesion_ml_healthy_mean"] == 8.0
    too_few = summarise(cases[:2])
    assert too_few["icc_vr_all"] is None and too_few["bland_altman_vr_all"] is None and too_few["notes"]


def test_eval_quick_end_to_end(tmp_path, monkeypatch, capsys):
    from coviax.lesions.unet_model import UNet2D, UNetConfig, save_checkpoint

    weights = tmp_path / "tiny.pt"
    save_checkpoint(UNet2D(UNetConfig(depth=2, width=4, input_size=64)), weights, meta={"name": "tiny-test"})
    out = tmp_path / "eval"
    rc = main(["eval", "--quick", "--out", str(out), "--engines", "threshold,kmeans,unet", "--weights", str(weights)])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in ("threshold", "kmeans", "unet"):
        assert name in printed
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "coviax.eval/1" and results["quick"] is True
    assert [c["case_id"] for c in results["suite"]] == [c.case_id for c in QUICK_SUITE]
    for name in ("threshold", "kmeans", "unet"):
        e = results["engines"][name]
        assert e["status"] == "ok" and len(e["cases"]) == 2
        assert e["summary"]["fp_lesion_ml_healthy_mean"] is not None
        assert 0 <= e["summary"]["dice_all_mean"] <= 1
    assert results["engines"]["unet"]["weights_sha256"]
    # the product's default engine is also scored end to end, inside the classical lung mask
    e2e = results["engines"]["unet+classical"]
    assert e2e["status"] == "ok" and e2e["lung_mask"] == "classical" and len(e2e["cases"]) == 2
    assert results["engines"]["unet"]["lung_mask"] == "true"
    assert results["suite"][0]["true_ratios_pct"]["all"] == 0.0 and results["suite"][1]["true_ratios_pct"]["all"] > 5
    md = (out / "RESULTS.md").read_text()
    assert "| threshold |" in md and "| kmeans |" in md and "| unet |" in md and "Seed split" in md
    assert "| unet+classical |" in md
    assert (out / "scatter.png").stat().st_size > 1000 and (out / "bland_altman.png").stat().st_size > 1000
    assert list((out / "cache").glob("*.npz"))
    # second run: phantoms come from the cache, numbers are the same; the U-Net is skipped without weights
    monkeypatch.delenv("COVIAX_WEIGHTS", raising=False)
    monkeypatch.setattr("coviax.lesions.unet.SHIPPED_WEIGHTS", tmp_path / "absent.pt")
    rc = main(["eval", "--quick", "--out", str(out), "--engines", "threshold,unet"])
    assert rc == 0
    again = json.loads((out / "results.json").read_text())
    assert again["cache"]["hits"] == 2
    assert again["engines"]["unet"]["status"] == "skipped" and "checkpoint" in again["engines"]["unet"]["note"]
    assert again["engines"]["threshold"]["cases"][1]["dice_all"] == results["engines"]["threshold"]["cases"][1]["dice_all"]
    assert "skipped" in format_table(again)


def test_eval_rejects_unknown_engine(tmp_path):
    assert main(["eval", "--quick", "--out", str(tmp_path), "--engines", "threshold,magic"]) == 2
