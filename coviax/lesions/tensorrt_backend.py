"""TensorRT for the U-Net on CUDA: ONNX export, engine build with a batch profile, disk cache.

Used automatically when ``tensorrt`` imports and the device is CUDA; checked
against the torch fp32 output on a warm-up batch before it replaces the torch
forward pass. Anything that goes wrong (no TensorRT, a parser error, a build
failure, disagreement above 0.1 % of pixels) leaves the torch path in place and
says so in the engine's notes, which the report carries -- unless TensorRT was
asked for explicitly (``backend="tensorrt"``), where it is an error.

NOT YET MEASURED: TensorRT cannot be installed on the project's machines (no
wheel reachable), so this path has only been exercised up to the ONNX export
(checked against onnxruntime) and the selection/fallback logic. See README.

Engines are cached as ``<cache>/<key>.plan`` where the key hashes the weights'
SHA-256, the TensorRT version, the GPU's compute capability, the input size,
the batch profile and the precision: a plan is only valid for exactly that.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import torch

from coviax.errors import OptionError

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "slices", "logits"
MIN_BATCH, OPT_BATCH, MAX_BATCH = 1, 16, 32
AGREEMENT_REQUIRED = 0.999


def cache_dir() -> Path:
    return Path(os.environ.get("COVIAX_TRT_CACHE", Path.home() / ".cache" / "coviax" / "tensorrt"))


def cache_key(weights_sha256: str, trt_version: str, compute_capability: tuple[int, int], input_size: int,
              precision: str = "fp16", batch_profile: tuple[int, int, int] = (MIN_BATCH, OPT_BATCH, MAX_BATCH)) -> str:
    """A file name that changes whenever the plan would be invalid."""
    parts = [weights_sha256, trt_version, f"sm{compute_capability[0]}{compute_capability[1]}", str(input_size),
             precision, "-".join(map(str, batch_profile))]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
    return f"unet-sm{compute_capability[0]}{compute_capability[1]}-trt{trt_version}-{digest}.plan"


def export_onnx(model: torch.nn.Module, input_size: int) -> bytes:
    """ONNX (opset 17) of the U-Net with a dynamic batch dimension, fp32 weights."""
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 1, input_size, input_size, device=next(model.parameters()).device)
    buffer = io.BytesIO()
    torch.onnx.export(
        model, example, buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=17, dynamo=False,
    )
    return buffer.getvalue()


def build_plan(trt, onnx_bytes: bytes, input_size: int, fp16: bool = True) -> bytes:
    """Build a serialized TensorRT engine with an optimisation profile over the batch dimension."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX export: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (1, input_size, input_size)
    profile.set_shape(INPUT_NAME, (MIN_BATCH, *shape), (OPT_BATCH, *shape), (MAX_BATCH, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    return bytes(plan)


class TensorRTRunner:
    """Callable like the torch model: float (n, 1, s, s) CUDA tensor -> logits (n, classes, s, s)."""

    def __init__(self, trt, plan: bytes, n_classes: int, device: torch.device):
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the cached plan")
        self.context = self.engine.create_execution_context()
        self.n_classes = n_classes
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        n, _, h, w = x.shape
        out = torch.empty((n, self.n_classes, h, w), dtype=torch.float32, device=self.device)
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


def load_or_build(trt, engine) -> bytes:
    capability = torch.cuda.get_device_capability(engine.device)
    key = cache_key(engine.weights_sha256, trt.__version__, capability, engine.input_size)
    path = cache_dir() / key
    if path.is_file():
        return path.read_bytes()
    plan = build_plan(trt, export_onnx(engine.model, engine.input_size), engine.input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(plan)
    tmp.replace(path)
    return plan


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Fraction of pixels whose argmax class agrees."""
    return float((reference.argmax(1) == candidate.argmax(1)).float().mean())


def attach(engine, required: bool = False) -> bool:
    """Swap ``engine.forward`` for a TensorRT runner if possible; returns True if it did.

    Raises
    ------
    OptionError
        only when ``required`` and TensorRT cannot be used.
    """
    try:
        import tensorrt as trt
    except ImportError:
        if required:
            raise OptionError("backend tensorrt asked for, but the tensorrt package is not installed") from None
        engine.notes.append("TensorRT not installed: torch path used")
        return False
    try:
        runner = TensorRTRunner(trt, load_or_build(trt, engine), engine.model.config.n_classes, engine.device)
        check = _warmup_batch(engine)
        with torch.inference_mode():
            reference = engine.model.float()(check)
            candidate = runner(check)
        agree = agreement(reference, candidate)
        if agree < AGREEMENT_REQUIRED:
            raise RuntimeError(f"TensorRT output agrees with torch fp32 on {agree:.4%} of pixels (< 99.9 %)")
    except Exception as exc:  # any TensorRT failure falls back to torch (or is raised if required)
        if required:
            raise OptionError(f"TensorRT could not be used: {exc}") from None
        engine.notes.append(f"TensorRT failed ({exc.__class__.__name__}: {str(exc)[:160]}): torch path used")
        log.warning("TensorRT unavailable, torch path used: %s", exc)
        return False
    engine.forward = runner
    engine.batch_size = min(engine.batch_size, MAX_BATCH)
    engine.notes.append(f"TensorRT {trt.__version__} engine (agreement with fp32 {agree:.4%})")
    return True


def _warmup_batch(engine) -> torch.Tensor:
    """A lung-like batch: air with dense structures, so the check exercises every class."""
    g = torch.Generator(device="cpu").manual_seed(0)
    s = engine.input_size
    hu = torch.full((4, 1, s, s), -850.0) + torch.randn(4, 1, s, s, generator=g) * 80
    hu[:, :, s // 4 : s // 2, s // 4 : s // 2] = -500.0
    hu[:, :, s // 2 : 3 * s // 4, s // 2 : 3 * s // 4] = 20.0
    from coviax.lesions.unet_model import normalise_hu

    return normalise_hu(hu).to(engine.device)
