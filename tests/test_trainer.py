"""The training pipeline (trainer/coviax_trainer) end to end on a tiny config, plus its pieces.

One tiny run (trainer/configs/tiny.yaml: two 8-slice phantoms at 128 px, a
64 px U-Net, one epoch per stage, local Ray) is shared by the module:

1. ``coviax train pseudo-labels`` alone (a run "killed" after stage 1);
2. ``coviax train correct --export 2`` then ``--import`` of one edited label map;
3. ``coviax train all``: must skip stage 1 and go through every other stage.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from coviax.cli import main  # noqa: E402
from coviax.labels import Label  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "trainer" / "configs" / "tiny.yaml"
STAGES = ("pseudo-labels", "correct", "unet-a", "relabel", "unet-b", "export")


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*"))}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    run_dir = tmp / "run"
    old = os.environ.get("COVIAX_CODE_VERSION")
    os.environ["COVIAX_CODE_VERSION"] = "test"
    args = ["--config", str(TINY), "--run-dir", str(run_dir)]
    try:
        assert main(["train", "pseudo-labels", *args]) == 0
        shards_after_stage1 = _mtimes(run_dir / "pseudo" / "shards")
        manifest_after_stage1 = (run_dir / "pseudo" / "manifest.jsonl").read_text()

        review = tmp / "review"
        assert main(["train", "correct", "--export", "2", "--out", str(review), *args]) == 0
        # edit one slice of a training scan: a 6x6 block of consolidation in the lung
        items = json.loads((review / "review.json").read_text())["slices"]
        item = next(i for i in items if i["scan"].startswith("phantom-001"))
        from coviax_trainer.labelmaps import read_label_image, write_label_png

        edited = read_label_image(review / item["label"])
        ys, xs = np.nonzero(edited == Label.HEALTHY_LUNG)
        cy, cx = int(np.median(ys)), int(np.median(xs))
        edited[cy - 3 : cy + 3, cx - 3 : cx + 3] = Label.CONSOLIDATION
        fixed = tmp / "fixed"
        fixed.mkdir()
        write_label_png(fixed / item["label"], edited)
        assert main(["train", "correct", "--import", str(fixed), *args]) == 0

        assert main(["train", "all", *args]) == 0
    finally:
        if old is None:
            os.environ.pop("COVIAX_CODE_VERSION", None)
        else:
            os.environ["COVIAX_CODE_VERSION"] = old
    return {
        "run": run_dir, "shards_after_stage1": shards_after_stage1, "manifest_after_stage1": manifest_after_stage1,
        "item": item, "edited": edited, "review": review,
    }


def test_every_stage_runs_and_the_checkpoint_serves(tiny_run):
    run = tiny_run["run"]
    state = json.loads((run / "state.json").read_text())
    assert all(state["stages"][s]["status"] == "done" for s in STAGES)
    weights = run / "export" / "unet_b.pt"
    assert weights.is_file() and weights.stat().st_size < 20e6

    from coviax.lesions import make_engine
    from coviax.lungs import LungMask
    from coviax.io import Volume

    engine = make_engine("unet", weights=str(weights))
    assert engine.meta["name"] == "unet_b"
    assert engine.meta["intended_use"] == "research use only, not a medical device"
    assert engine.meta["code_version"] == "test"
    assert engine.meta["data"]["phantom_ground_truth_used"] is False
    for key in ("version", "training_config", "augmentation", "date", "data"):
        assert key in engine.meta
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 100, size=(3, 96, 96)).astype(np.int16)
    lung = np.zeros(hu.shape, np.uint8)
    lung[:, 20:76, 10:45] = 1
    lung[:, 20:76, 50:86] = 2
    labels = engine.segment(Volume(hu=hu, spacing_zyx=(5.0, 1.0, 1.0)), LungMask(lung, "test")).labels
    assert labels.shape == hu.shape and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    assert np.all(labels[lung == 0] == 0)

    card = json.loads((run / "export" / "unet_b.card.json").read_text())
    assert card["intended_use"] == "research use only, not a medical device"
    assert card["sha256"] and (run / "export" / "unet_b.card.md").read_text().startswith("# Model card")


def test_all_resumes_after_stage_1_without_redoing_it(tiny_run):
    run = tiny_run["run"]
    assert _mtimes(run / "pseudo" / "shards") == tiny_run["shards_after_stage1"]
    log = (run / "stages.log").read_text().splitlines()
    assert sum(" pseudo-labels start" in line for line in log) == 1
    assert any(" pseudo-labels skip" in line for line in log)
    for stage in STAGES[2:]:
        assert any(f" {stage} done" in line for line in log), stage
    assert not list((run / "pseudo").glob("shards/.*.part")), "no half-written shard left behind"


def test_imported_correction_replaces_the_generated_label(tiny_run):
    from coviax_trainer.config import load_config
    from coviax_trainer.data import load_slices, read_manifest
    from coviax_trainer.rundir import RunDir

    run_dir, item, edited = tiny_run["run"], tiny_run["item"], tiny_run["edited"]
    run = RunDir(run_dir, load_config(TINY))
    for set_name in ("pseudo", "relabel"):
        rows = [r for r in read_manifest(run, set_name) if r["scan"] == item["scan"] and r["slice"] == item["slice"]]
        assert len(rows) == 1 and rows[0]["corrected"] is True, set_name
        others = [r for r in read_manifest(run, set_name) if (r["scan"], r["slice"]) != (item["scan"], item["slice"])]
        assert not any(r["corrected"] for r in others)
        loaded = load_slices(run, set_name, scans={item["scan"]})
        i = loaded.slice.index(item["slice"])
        assert loaded.corrected[i] and np.array_equal(loaded.label[i], edited), set_name
    before = [json.loads(line) for line in tiny_run["manifest_after_stage1"].splitlines()]
    assert not any(r["corrected"] for r in before)
    for stage_dir in ("unet_a", "unet_b"):
        info = json.loads((run_dir / stage_dir / "data" / "info.json").read_text())
        assert info["corrected_slices"] == 1, stage_dir


def test_review_folder_is_documented(tiny_run):
    review = tiny_run["review"]
    readme = (review / "README.md").read_text()
    assert "label codes" in readme.lower() and "consolidation" in readme and "--import" in readme
    assert len(list(review.glob("*.label.png"))) == 2 and len(list(review.glob("*.overlay.png"))) == 2


# --------------------------------------------------------------------------- config errors

def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = "scans:\n  - sample: true\n  - phantom: {seeds: [1]}\nvalidation: {holdout: 1}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (BASE + "train: {epochz: 3}\n", "unknown key 'train.epochz' (did you mean 'epochs'?)"),
        (BASE + "modle: {depth: 3}\n", "unknown key 'modle'"),
        ("scans:\n  - path: /nonexistent/scan.nii.gz\n  - sample: true\n", "not found"),
        ("scans:\n  - phantom: {seeds: [1000]}\n  - sample: true\n", "not a training seed"),
        (BASE + "train: {epochs: many}\n", "train.epochs must be an integer"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, capsys, text, message):
    config = _write(tmp_path, text)
    assert main(["train", "pseudo-labels", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "all", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_stage_needs_its_predecessor(tmp_path, capsys):
    config = _write(tmp_path, BASE)
    assert main(["train", "unet-a", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    assert "needs stage pseudo-labels first" in capsys.readouterr().err


# --------------------------------------------------------------------------- pieces

def test_augmentation_keeps_shapes_and_codes():
    from coviax_trainer.config import Augmentation
    from coviax_trainer.objective import augment
    import dataclasses

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32)
    y = torch.randint(0, 5, (4, 32, 32))
    aug = dataclasses.asdict(Augmentation(p=1.0, blur_p=1.0))
    xa, ya = augment(x.clone(), y.clone(), aug, g)
    assert xa.shape == x.shape and ya.shape == y.shape
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1
    assert set(ya.unique().tolist()) <= set(range(5))
    none = dict(aug, p=0.0, noise_hu=[0.0, 0.0])
    xn, yn = augment(x.clone(), y.clone(), none, g)
    assert torch.allclose(xn, x, atol=1e-5) and torch.equal(yn, y)


@pytest.mark.parametrize("kind", ["dice_ce", "gce", "ce"])
def test_losses_fall_when_the_prediction_matches(kind):
    from coviax_trainer.objective import loss_fn

    y = torch.randint(0, 5, (2, 16, 16))
    good = torch.nn.functional.one_hot(y, 5).permute(0, 3, 1, 2).float() * 10
    bad = torch.zeros_like(good)
    assert float(loss_fn(good, y, kind)) < float(loss_fn(bad, y, kind))


def test_label_maps_with_bad_codes_are_refused(tmp_path):
    from PIL import Image

    from coviax_trainer.labelmaps import CorrectionError, read_label_image, write_label_png

    labels = np.zeros((8, 8), np.uint8)
    labels[2:4, 2:4] = 3
    write_label_png(tmp_path / "ok.label.png", labels)
    assert np.array_equal(read_label_image(tmp_path / "ok.label.png"), labels)
    bad = labels.copy()
    bad[0, 5] = 9
    Image.fromarray(bad, mode="L").save(tmp_path / "bad.label.png")
    with pytest.raises(CorrectionError, match=r"row 0, column 5\) has value 9"):
        read_label_image(tmp_path / "bad.label.png")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from coviax_trainer.rundir import atomic_path

    target = tmp_path / "shard.npz"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert not target.exists() and not list(tmp_path.iterdir())


def test_model_card_reads_only_true_lung_mask_rows():
    """The card compares engines on the true lung mask; an end-to-end row (classical lungs) stays out of it."""
    from coviax_trainer.evalread import summarise

    def engine(dice_all, lung_mask, **extra):
        return {"status": "ok", "model": "m", "lung_mask": lung_mask, **extra,
                "summary": {"dice_all_mean": dice_all, "dice_ggo_mean": dice_all, "dice_consolidation_mean": 0.5,
                            "abs_ratio_error_pp_mean": {"all": 1.0}, "icc_vr_all": {"icc": 0.9}}}

    data = {"format": "coviax.eval/1", "suite": [{}] * 12, "engines": {
        "kmeans": engine(0.5, "true"), "unet": engine(0.7, "true", weights_sha256="abc"),
        "unet+classical": engine(0.6, "classical", weights_sha256="abc"),
    }}
    ev = summarise(data, "eval/results.json", "abc")
    assert list(ev["engines"]) == ["kmeans", "unet"]
    assert ev["engines"]["unet"]["dice_all"] == 0.7 and ev["unet_is_this_checkpoint"] is True
