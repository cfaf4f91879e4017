"""Streamed slices decoded in separate processes, each with a memory limit.

A slice engine (the U-Net) segments each instance as it arrives, so the server
decodes instances while they stream in. A decoder fed hostile bytes may ask for
gigabytes (a codestream that declares a huge image) or crash the process (a
panic, a segfault in a C decoder); here that happens in a small pool of spawn
processes whose address space is capped (``RLIMIT_AS``): the decode fails with
MemoryError or the process dies, the pool is rebuilt, and the instance is left
to the 3D read, which names the defect. This module imports only numpy,
pydicom and :mod:`coviax.io`, so that a decoder process stays small.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from coviax_service.processes import CappedProcessPool

log = logging.getLogger("coviax.service")

#: Address space of one decoder process: a 2048 x 2048 slice needs a few tens of MB; the rest is headroom.
DECODER_MEMORY_BYTES = 2 * 1024**3
DECODER_PROCESSES = 2
_PROCESS_EXITS = (KeyboardInterrupt, SystemExit, GeneratorExit)


def decode_instance(path: Path) -> tuple[str, np.ndarray] | None:
    """(SOPInstanceUID, HU slice) of one received CT instance, or None if it is not one we can decode here.

    The HU come from :func:`coviax.io.slice_to_hu`, the series reader's own conversion, so a
    streamed slice gets the same prediction as the slice of the volume read after the upload.
    A defect (including a decoder that panics) is left to that 3D read, which names it.
    """
    import pydicom

    from coviax.io import slice_to_hu

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


class DecoderPool:
    """A few spawn processes with a memory limit that decode streamed instances."""

    def __init__(self, processes: int = DECODER_PROCESSES, memory_bytes: int = DECODER_MEMORY_BYTES):
        self._pool = CappedProcessPool("decoder", processes, memory_bytes)
        self.processes = processes

    def start(self) -> None:
        self._pool.start()

    async def warm_up(self) -> None:
        """Start every process now (the first scan should not pay for it)."""
        await asyncio.gather(*(self.run(os.getpid) for _ in range(self.processes)))

    async def run(self, fn, *args):
        """``fn(*args)`` in a decoder process. BrokenProcessPool (a process died) after the pool was replaced."""
        future = self._pool.submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._pool.replace(future.executor)
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

    def close(self) -> None:
        self._pool.close()
