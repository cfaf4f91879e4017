"""Resident memory of a U-Net server over many scans (issue 13 item 6: 0.48 -> 1.97 GB over 69 scans).

    python bench/server_memory.py [--scans 30] [--slices 16] [--env NAME=VALUE ...]

Starts ``coviax serve --engine unet`` as a subprocess, sends the same real series (``--slices`` slices of
the bundled chest CT at 512 x 512) ``--scans`` times, one after the other, and prints the server's RSS
after each, then the growth from scan 5 to the end. ``--env`` sets variables of the server's environment
(for example MALLOC_ARENA_MAX=2) to compare allocator settings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from service_support import free_port, make_small_series  # noqa: E402


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", type=int, default=30)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--env", action="append", default=[])
    args = parser.parse_args()
    from coviax_client import CoviaxClient

    work = Path(tempfile.mkdtemp(prefix="coviax-memory-"))
    series = make_small_series(work / "series", n=args.slices, step=1)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIAX_")}
    env.update(dict(e.split("=", 1) for e in args.env))
    server = subprocess.Popen(
        [sys.executable, "-m", "coviax.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port",
         "0", "--data-dir", str(work / "data"), "--workers", "1", "--engine", "unet", "--lungs", "classical",
         "--retention-max-bytes", "1"],
        stdout=open(work / "server.log", "wb"), stderr=subprocess.STDOUT, env=env)
    try:
        with CoviaxClient(f"127.0.0.1:{port}", retries=0, timeout=600) as client:
            client.wait_ready(300)
            sizes = []
            for k in range(args.scans):
                started = time.perf_counter()
                client.segment(series, outputs=["report"])
                sizes.append(rss(server.pid))
                print(f"scan {k + 1:3d}: {time.perf_counter() - started:5.1f} s, server RSS {sizes[-1] / 2**20:7.0f} MiB",
                      flush=True)
            base = sizes[min(4, len(sizes) - 1)]
            print(f"{' '.join(args.env) or 'default allocator'}: RSS after scan 5 {base / 2**20:.0f} MiB, after scan "
                  f"{len(sizes)} {sizes[-1] / 2**20:.0f} MiB ({(sizes[-1] / base - 1) * 100:+.1f} %)")
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
