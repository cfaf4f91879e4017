"""Starting or joining Ray, and the per-scan Ray Data map used by stages 1 and 4."""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Iterable

from coviax_trainer.config import Config
from coviax_trainer.scans import ScanSpec

_started_here = False


def ensure_ray(config: Config, address: str | None) -> None:
    """Join ``address`` or start a local Ray with ``config.ray.num_cpus`` CPUs (quiet: no dashboard, no worker logs)."""
    global _started_here
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=int(config.ray.num_cpus), **quiet)
        _started_here = True
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.context")
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    for name in ("ray.train", "ray.tune", "ray.air", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # we draw our own per-scan progress


def shutdown_ray() -> None:
    global _started_here
    import ray

    if _started_here and ray.is_initialized():
        ray.shutdown()
    _started_here = False


def map_scans(fn: Callable, specs: Iterable[ScanSpec], config: Config, fn_kwargs: dict) -> Iterable[dict]:
    """Run ``fn(batch, **fn_kwargs)`` on each scan in parallel with Ray Data; yield one result row per scan as it finishes.

    ``fn`` gets a numpy batch with column ``spec`` (JSON of a :class:`ScanSpec`)
    and returns a dict of equal-length columns.
    """
    import ray

    items = [{"spec": s.to_json()} for s in specs]
    if not items:
        return
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        fn,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs=fn_kwargs,
        num_cpus=config.ray.cpus_per_scan_task,
        compute=ray.data.TaskPoolStrategy(size=max(1, min(config.ray.data_concurrency, len(items)))),
        zero_copy_batch=True,
    )
    for row in ds.iter_rows():
        yield {k: (v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v) for k, v in row.items()}


def spec_of(batch: dict) -> ScanSpec:
    value = batch["spec"][0]
    return ScanSpec.from_json(value if isinstance(value, str) else value.decode())


def row(**values) -> dict:
    """A one-row result batch for map_batches (plain JSON-able values)."""
    return {k: [json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in values.items()}
