"""Fast U-Net paths agree with the fp32 reference; TensorRT selection, cache keys and fallback."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from coviax.errors import OptionError
from coviax.labels import Label
from coviax.lesions import tensorrt_backend as trtb
from coviax.lesions.threshold import ThresholdEngine
from coviax.lesions.unet import UNetEngine, cpu_supports_bf16, resolve_precision
from coviax.lesions.unet_model import UNet2D, UNetConfig, normalise_hu


@pytest.fixture(scope="module")
def fitted_unet(sample_volume, sample_lungs):
    """A small U-Net fitted for a few steps to HU-band labels of real slices, so that its output is
    not trivial (a random network predicts nearly one class and would agree with anything)."""
    torch.manual_seed(0)
    z = slice(24, 40, 2)
    hu = sample_volume.hu[z]
    target = ThresholdEngine().segment(sample_volume, sample_lungs).labels[z].astype(np.int64)
    model = UNet2D(UNetConfig(depth=3, width=8, input_size=128))
    x = torch.nn.functional.interpolate(normalise_hu(torch.from_numpy(hu))[:, None], size=(128, 128), mode="bilinear")
    y = torch.nn.functional.interpolate(torch.from_numpy(target)[:, None].float(), size=(128, 128), mode="nearest")[:, 0].long()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    return model, hu


def test_bf16_agrees_with_fp32(fitted_unet):
    model, hu = fitted_unet
    ref = UNetEngine(model, precision="fp32").predict_slices(hu)
    assert len(np.unique(ref)) >= 3, "the reference must predict several classes for the check to mean anything"
    fast = UNetEngine(model, precision="bf16").predict_slices(hu)
    agree = (ref == fast).mean()
    assert agree >= 0.999, f"bf16 agrees on {agree:.4%} only"


def test_auto_precision_on_this_cpu():
    expected = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16


def test_fp16_on_cpu_is_refused():
    with pytest.raises(OptionError, match="fp16 is for CUDA"):
        UNetEngine(UNet2D(UNetConfig(depth=2, width=4, input_size=32)), precision="fp16")
    with pytest.raises(OptionError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", torch.device("cpu"))


def test_onnx_export_matches_torch(fitted_unet):
    ort = pytest.importorskip("onnxruntime")
    model, hu = fitted_unet
    onnx_bytes = trtb.export_onnx(model, 128)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = torch.nn.functional.interpolate(normalise_hu(torch.from_numpy(hu[:5]))[:, None], size=(128, 128), mode="bilinear")
    with torch.inference_mode():
        ref = model(x)
    (out,) = session.run(None, {trtb.INPUT_NAME: x.numpy()})  # batch 5: the batch axis is dynamic
    assert trtb.agreement(ref, torch.from_numpy(out)) >= 0.999


def test_cache_key_changes_with_everything_that_invalidates_a_plan():
    base = dict(weights_sha256="a" * 64, trt_version="10.7.0", compute_capability=(9, 0), input_size=256)
    key = trtb.cache_key(**base)
    assert key.startswith("unet-sm90-trt10.7.0-") and key.endswith(".plan")
    for change in [dict(weights_sha256="b" * 64), dict(trt_version="10.8.0"), dict(compute_capability=(8, 9)),
                   dict(input_size=512), dict(precision="fp32"), dict(batch_profile=(1, 8, 64))]:
        assert trtb.cache_key(**{**base, **change}) != key
    assert trtb.cache_key(**base) == key


def _cpu_engine():
    return UNetEngine(UNet2D(UNetConfig(depth=2, width=4, input_size=32)), precision="fp32")


def test_without_tensorrt_the_torch_path_stays_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    engine = _cpu_engine()
    forward = engine.forward
    assert trtb.attach(engine) is False
    assert engine.forward is forward
    assert engine.notes == ["TensorRT not installed: torch path used"]
    with pytest.raises(OptionError, match="tensorrt package is not installed"):
        trtb.attach(_cpu_engine(), required=True)


def test_a_failing_tensorrt_build_falls_back(monkeypatch, tmp_path):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.0.0-fake"

    class Logger:
        WARNING = 0

        def __init__(self, *a):
            pass

    class Builder:
        def __init__(self, *a):
            raise RuntimeError("no CUDA device for the builder")

    fake.Logger, fake.Builder = Logger, Builder
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setenv("COVIAX_TRT_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    engine = _cpu_engine()
    engine.weights_sha256 = "c" * 64
    assert trtb.attach(engine) is False
    assert "TensorRT failed (RuntimeError: no CUDA device for the builder)" in engine.notes[0]
    with pytest.raises(OptionError, match="TensorRT could not be used"):
        trtb.attach(engine, required=True)


def test_tensorrt_backend_needs_cuda(tmp_path):
    from coviax.lesions.unet_model import save_checkpoint

    path = tmp_path / "m.pt"
    save_checkpoint(UNet2D(UNetConfig(depth=2, width=4, input_size=32)), path)
    with pytest.raises(OptionError, match="needs --device cuda"):
        UNetEngine.from_checkpoint(str(path), device="cpu", backend="tensorrt")


def test_engine_labels_are_uint8_codes(fitted_unet):
    model, hu = fitted_unet
    raw = UNetEngine(model).predict_slices(hu[:3])
    assert raw.dtype == np.uint8 and raw.max() <= Label.CONSOLIDATION
