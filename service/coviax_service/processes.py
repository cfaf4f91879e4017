"""Child processes of the server: capped in memory, gone with the server, replaced when one dies.

Two pools run work outside the server's event loop: the 3D workers (a job's
lungs, engine, quantities and exports, :mod:`coviax_service.worker`) and the
decoders of streamed slices (:mod:`coviax_service.decoding`). Both take
hostile input, so each process

- has its address space capped (``RLIMIT_AS``): an allocation past the cap
  fails with MemoryError inside the work, where it becomes a status, instead
  of taking the node's memory (Linux enforces no limit on resident memory);
- writes no core dumps;
- exits within a second once the server that started it is gone (a SIGKILLed
  server cannot stop its pool, and its children would hold memory for ever).

A process can still die (the kernel's out-of-memory killer, a crash in a
native decoder). :class:`concurrent.futures.ProcessPoolExecutor` then breaks
for all the work it holds; :meth:`CappedProcessPool.replace` starts a new
executor once, whoever sees the break first, and the callers decide whether
to try again. This module imports only the standard library, so a decoder
process stays small.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

log = logging.getLogger("coviax.service")

#: How often a child checks that the server that started it is still there (seconds).
PARENT_CHECK_S = 1.0


def limit_memory(memory_bytes: int) -> None:
    """Cap this process's address space at ``memory_bytes`` (0: no cap) and turn off core dumps."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def start_parent_watch(server_pid: int) -> None:
    """End this process within PARENT_CHECK_S seconds once ``server_pid`` is no longer its parent."""
    threading.Thread(target=_exit_with_parent, args=(server_pid,), name="coviax-parent-watch", daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    # Once the parent is gone this process is re-parented (possibly before this thread started).
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _init_child(memory_bytes: int, server_pid: int, initializer, initargs) -> None:
    limit_memory(memory_bytes)
    start_parent_watch(server_pid)
    if initializer is not None:
        initializer(*initargs)


class CappedProcessPool:
    """``processes`` spawn processes, each capped at ``memory_bytes`` of address space (0: no cap).

    ``initializer(*initargs)`` runs in each process after the cap; ``name`` is used in log lines.
    """

    def __init__(self, name: str, processes: int, memory_bytes: int, initializer=None, initargs: tuple = ()):
        self.name = name
        self.processes = processes
        self.memory_bytes = memory_bytes
        self.initializer = initializer
        self.initargs = initargs
        self.replaced = 0  # how many times a broken executor was replaced
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ProcessPoolExecutor(
            max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_child, initargs=(self.memory_bytes, os.getpid(), self.initializer, self.initargs),
        )

    @property
    def executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            raise RuntimeError(f"the {self.name} pool is not started")
        return self._executor

    def submit(self, fn, *args) -> Future:
        """``fn(*args)`` in a process; the future raises BrokenProcessPool if a process died meanwhile.

        Pass the executor the future came from (``future.executor``) to :meth:`replace`.
        """
        executor = self.executor
        future = executor.submit(fn, *args)
        future.executor = executor
        return future

    def replace(self, broken: ProcessPoolExecutor) -> None:
        """A process of ``broken`` died: start a new executor, unless another caller did already."""
        if self._executor is not broken:
            return
        log.warning("a %s process died (over its memory limit, the out-of-memory killer or a crash in native "
                    "code); starting new %s processes", self.name, self.name)
        self._stop(broken)
        self.replaced += 1
        self.start()

    def pids(self) -> list[int]:
        return [p.pid for p in (getattr(self._executor, "_processes", None) or {}).values()]

    def close(self) -> None:
        if self._executor is not None:
            self._stop(self._executor)
            self._executor = None

    @staticmethod
    def _stop(executor: ProcessPoolExecutor) -> None:
        # The executor has no public list of its processes; they are terminated so that a stuck job
        # cannot keep the server from stopping.
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(timeout=5)


__all__ = ["BrokenProcessPool", "CappedProcessPool", "limit_memory", "start_parent_watch"]
