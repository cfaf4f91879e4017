"""Retention: the artifacts of finished jobs older than ``retention_days`` are removed, then the
oldest first while the total exceeds ``retention_max_bytes``. The job row and its numbers stay;
``artifacts_expired`` says the files are gone."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

log = logging.getLogger("coviax.service")

RETENTION_INTERVAL_S = 600.0


class Retention:
    def __init__(self, config, store):
        self.config = config
        self.store = store

    @property
    def enabled(self) -> bool:
        return bool(self.config.retention_days or self.config.retention_max_bytes)

    async def loop(self) -> None:
        """Forever: a pass every RETENTION_INTERVAL_S seconds."""
        while True:
            try:
                await self.run_pass()
            except Exception:  # a failed pass must not stop the loop
                log.exception("retention pass failed")
            await asyncio.sleep(RETENTION_INTERVAL_S)

    def select(self, rows: list[dict], now: float) -> list[dict]:
        """The rows (oldest first, with their ``bytes`` and ``finished``) whose artifacts go now."""
        total = sum(r["bytes"] for r in rows)
        cutoff = now - self.config.retention_days * 86400
        chosen = []
        for r in rows:
            too_old = bool(self.config.retention_days) and (r["finished"] or 0) < cutoff
            too_big = bool(self.config.retention_max_bytes) and total > self.config.retention_max_bytes
            if too_old or too_big:
                chosen.append(r)
                total -= r["bytes"]
        return chosen

    async def run_pass(self) -> int:
        """One pass; returns how many jobs lost their artifacts."""
        if not self.enabled:
            return 0
        rows = await self.store.call(self.store.retention_candidates)
        chosen = self.select(rows, time.time())
        for r in chosen:
            await self.store.call(self.store.expire_artifacts, r["job_id"])
            for out in self.store.job_dir(r["job_id"]).glob("out-*"):
                await asyncio.to_thread(shutil.rmtree, out, True)
        if chosen:
            log.info("retention: removed the artifacts of %d job(s)", len(chosen))
        return len(chosen)
