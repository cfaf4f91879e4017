"""The job store: one SQLite file in the data folder, owned by one server process.

Layout of the data folder::

    DATA_DIR/coviax.db          jobs and artifact rows (WAL, synchronous=FULL)
    DATA_DIR/coviax.lock        held (flock) by the one process that owns the folder
    DATA_DIR/jobs/JOB_ID/input/ the upload (instance-00000.dcm, ... or raw.npy), removed when the job ends
    DATA_DIR/jobs/JOB_ID/out/   the artifacts (report.json, labels.nii.gz, seg.dcm, montage.png)

Artifact files are written and fsync'ed before their rows are committed, so a
row never names a file that a crash could lose. Every call runs on one
dedicated thread (sqlite3 connections are not shared between threads), so the
event loop never waits on an fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from coviax.errors import OptionError

SCHEMA_VERSION = "1"


@functools.cache
def _states(terminal: bool) -> tuple[str, ...]:
    """The names of the active (``terminal=False``) or final job states, as the rows store them.

    :class:`coviax_service.jobs.model.JobState` is the one list; it is read on first use because
    the jobs package imports this module.
    """
    from coviax_service.jobs.model import JobState

    return tuple(s.value for s in JobState if s.terminal == terminal)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    idempotency_key TEXT UNIQUE,
    batch_id TEXT NOT NULL DEFAULT '',
    client_ref TEXT NOT NULL DEFAULT '',
    options TEXT NOT NULL,
    upload_complete INTEGER NOT NULL DEFAULT 0,
    instances INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    expected INTEGER NOT NULL DEFAULT 0,
    error_code TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    report TEXT,
    artifacts_expired INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    tenant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, created);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS artifacts (
    job_id TEXT NOT NULL REFERENCES jobs (job_id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    file_name TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
);
"""


#: Failures that say nothing about the scan: a new request with the same idempotency key makes a new job.
TRANSIENT_CODES = ("INTERNAL", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED", "DEADLINE_EXCEEDED")


def replaceable(row: dict) -> bool:
    """May a new request with this job's idempotency key replace it? (cancelled, upload lost, transient failure)"""
    if row["state"] == "CANCELLED":
        return True
    return row["state"] == "FAILED" and (not row["upload_complete"] or row["error_code"] in TRANSIENT_CODES)


class Store:
    """Async facade over one SQLite connection living on its own thread."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coviax-db")

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(exist_ok=True)
        fd = os.open(self.data_dir / "coviax.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OptionError(
                f"{self.data_dir}: another coviax server owns this data folder (coviax.lock is held); "
                "each server process needs its own --data-dir"
            ) from None
        self._lock_fd = fd
        self._thread.submit(self._connect).result()

    def _connect(self) -> None:
        conn = sqlite3.connect(self.data_dir / "coviax.db", isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(_SCHEMA)
        columns = {r["name"] for r in conn.execute("PRAGMA table_info(jobs)")}
        if "tenant" not in columns:  # a database made before tenants: its jobs belong to the tenant ""
            conn.execute("ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT ''")
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        self._conn = conn

    def close(self) -> None:
        def _close():
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            self._thread.submit(_close).result()
        finally:
            self._thread.shutdown(wait=True)
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    async def call(self, fn: Callable[..., Any], *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def call_sync(self, fn: Callable[..., Any], *args) -> Any:
        return self._thread.submit(fn, *args).result()

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    # ------------------------------------------------- sync operations (db thread)

    @contextlib.contextmanager
    def _tx(self):
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on an error).

        A generator, not a class defined per call: a class made in every transaction is a reference
        cycle the soak saw as server memory growing by the job.
        """
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def create_job(self, row: dict) -> dict:
        """Insert a job; an idempotency key held by a job that can be replaced is released first.

        Returns the new row, or the existing job's row (with ``existing=True``)
        when the key names a job that is still valid.
        """
        key = row.get("idempotency_key") or None
        now = time.time()
        with self._tx() as conn:
            if key:
                old = conn.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
                if old is not None:
                    if not replaceable(dict(old)):
                        return dict(old) | {"existing": True}
                    conn.execute("UPDATE jobs SET idempotency_key = NULL WHERE job_id = ?", (old["job_id"],))
            conn.execute(
                "INSERT INTO jobs (job_id, state, created, updated, idempotency_key, batch_id, client_ref, options, expected,"
                " tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row["job_id"], row.get("state", _states(False)[0]), now, now, key, row.get("batch_id", ""),
                 row.get("client_ref", ""), json.dumps(row["options"]), int(row.get("expected", 0)),
                 row.get("tenant", "")),
            )
            new = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (row["job_id"],)).fetchone()
        return dict(new) | {"existing": False}

    def update(self, job_id: str, **fields) -> None:
        fields["updated"] = time.time()
        if fields.get("state") in _states(True):
            fields.setdefault("finished", fields["updated"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as conn:
            conn.execute(f"UPDATE jobs SET {cols} WHERE job_id = ?", (*fields.values(), job_id))

    def finish_done(self, job_id: str, report: dict, artifacts: list[dict]) -> None:
        """One transaction: the job DONE with its report and its (already fsync'ed) artifact rows."""
        now = time.time()
        with self._tx() as conn:
            conn.execute("DELETE FROM artifacts WHERE job_id = ?", (job_id,))
            conn.executemany(
                "INSERT INTO artifacts (job_id, name, kind, file_name, path, size, sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(job_id, a["name"], a["kind"], a["file_name"], a["path"], a["size"], a["sha256"]) for a in artifacts],
            )
            conn.execute(
                "UPDATE jobs SET state = 'DONE', report = ?, updated = ?, finished = ?, error_code = '', "
                "error_message = '' WHERE job_id = ?",
                (json.dumps(report), now, now, job_id),
            )

    def find_key(self, key: str) -> dict | None:
        """The job an idempotency key names, unless that job may be replaced (cancelled, upload lost)."""
        row = self._conn.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        if row is None:
            return None
        row = dict(row)
        return None if replaceable(row) else row

    def start_attempt(self, job_id: str) -> int:
        """The job RUNNING, one more attempt; returns the attempt number (it names the output folder)."""
        with self._tx() as conn:
            conn.execute("UPDATE jobs SET state = 'RUNNING', attempts = attempts + 1, updated = ? WHERE job_id = ?",
                         (time.time(), job_id))
            return int(conn.execute("SELECT attempts FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0])

    def get(self, job_id: str) -> dict | None:
        row = self._conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return dict(row) if row else None

    def artifacts(self, job_id: str) -> list[dict]:
        rows = self._conn.execute("SELECT * FROM artifacts WHERE job_id = ? ORDER BY name", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    def list(self, batch_id: str = "", state: str = "", limit: int = 100, offset: int = 0,
             tenant: str = "") -> list[dict]:
        """A tenant's jobs, newest first, filtered by batch and state."""
        where, args = ["tenant = ?"], [tenant]
        if batch_id:
            where.append("batch_id = ?")
            args.append(batch_id)
        if state:
            where.append("state = ?")
            args.append(state)
        sql = "SELECT * FROM jobs WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, job_id LIMIT ? OFFSET ?"
        return [dict(r) for r in self._conn.execute(sql, (*args, limit, offset)).fetchall()]

    def active(self) -> list[dict]:
        marks = ",".join("?" * len(_states(False)))
        rows = self._conn.execute(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created", _states(False)
        ).fetchall()
        return [dict(r) for r in rows]

    def retention_candidates(self) -> list[dict]:
        """Finished jobs that still have artifacts, oldest first, with the bytes they hold."""
        marks = ",".join("?" * len(_states(True)))
        rows = self._conn.execute(
            "SELECT j.job_id, j.finished, COALESCE(SUM(a.size), 0) AS bytes FROM jobs j "
            "LEFT JOIN artifacts a ON a.job_id = j.job_id "
            f"WHERE j.state IN ({marks}) AND j.artifacts_expired = 0 "
            "GROUP BY j.job_id ORDER BY j.finished",
            _states(True),
        ).fetchall()
        return [dict(r) for r in rows]

    def expire_artifacts(self, job_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM artifacts WHERE job_id = ?", (job_id,))
            conn.execute("UPDATE jobs SET artifacts_expired = 1 WHERE job_id = ?", (job_id,))
