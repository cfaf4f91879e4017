"""Streamed slices decoded in separate processes, each with a memory limit.

A slice engine (the U-Net) segments each instance as it arrives, so the server
decodes instances while they stream in. A decoder fed hostile bytes may ask for
gigabytes (a codestream that declares a huge image) or crash the process (a
panic, a segfault in a C decoder); here that happens in a small pool of spawn
processes whose address space is capped (``RLIMIT_AS``): the decode fails with
MemoryError or the process dies, the pool is rebuilt, and the instance is left
to the 3D read, which names the defect. This module imports only numpy,
pydicom and :mod:`coviax.scan`, so that a decoder process stays small.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

log = logging.getLogger("coviax.service")

#: Address space of one decoder process: a 2048 x 2048 slice needs a few tens of MB; the rest is headroom.
DECODER_MEMORY_BYTES = 2 * 1024**3
DECODER_PROCESSES = 2
_PROCESS_EXITS = (KeyboardInterrupt, SystemExit, GeneratorExit)


def decode_instance(path: Path) -> tuple[str, np.ndarray] | None:
    """(SOPInstanceUID, HU slice) of one received CT instance, or None if it is not one we can decode here.

    The HU come from :func:`coviax.scan.slice_to_hu`, the series reader's own conversion, so a
    streamed slice gets the same prediction as the slice of the volume read after the upload.
    A defect (including a decoder that panics) is left to that 3D read, which names it.
    """
    import pydicom

    from coviax.scan import slice_to_hu

    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=False)
        if str(getattr(ds, "Modality", "")).upper() != "CT" or int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            return None
        hu = slice_to_hu(ds, path.name)
    except _PROCESS_EXITS:
        raise
    except BaseException:  # noqa: BLE001 - any defect, a Rust decoder's PanicException too: the 3D read judges it
        return None
    key = str(getattr(ds, "SOPInstanceUID", "")) or f"file:{path.name}"
    return key, hu


def init_decoder(memory_bytes: int, server_pid: int) -> None:
    """Decoder-process initializer: cap the address space, no core dumps, exit with the server."""
    import resource

    from coviax_service.worker import start_parent_watch

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    start_parent_watch(server_pid)


class DecoderPool:
    """A few spawn processes with a memory limit that decode streamed instances."""

    def __init__(self, processes: int = DECODER_PROCESSES, memory_bytes: int = DECODER_MEMORY_BYTES):
        self.processes = processes
        self.memory_bytes = memory_bytes
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=init_decoder, initargs=(self.memory_bytes, os.getpid()),
        )

    async def warm_up(self) -> None:
        """Start every process now (the first scan should not pay for it)."""
        await asyncio.gather(*(self.run(os.getpid) for _ in range(self.processes)))

    async def run(self, fn, *args):
        """``fn(*args)`` in a decoder process. BrokenProcessPool (a process died) after the pool was rebuilt."""
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            if self._pool is pool:  # the first caller to see the broken pool rebuilds it
                log.warning("a decoder process died (memory limit or a crash in a decoder); restarting the pool")
                self._stop(pool)
                self.start()
            raise

    async def decode(self, path: Path) -> tuple[str, np.ndarray] | None:
        """The decoded slice of a streamed instance, or None (not a CT slice, or the decoder failed)."""
        try:
            return await self.run(decode_instance, str(path))
        except (asyncio.CancelledError, *_PROCESS_EXITS):
            raise
        except BaseException as exc:  # noqa: BLE001 - a dead process, MemoryError, a panic: the 3D read judges it
            log.warning("a streamed instance could not be decoded here (%s); the 3D read will", type(exc).__name__)
            return None

    @staticmethod
    def _stop(pool: ProcessPoolExecutor | None) -> None:
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(timeout=5)

    def close(self) -> None:
        self._stop(self._pool)
        self._pool = None
