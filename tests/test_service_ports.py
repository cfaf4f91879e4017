"""`coviax serve` with a port already taken: one line naming the setting to change, exit 2, no traceback
(issue 31 item 2: a second server beside the first died with a raw OSError on the metrics port 9090)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from service_support import free_port


def _serve(tmp_path, port: int, metrics_port: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "coviax.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", str(metrics_port), "--data-dir", str(tmp_path / "data"), "--workers", "1",
           "--lungs", "classical", "--engine", "kmeans"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIAX_")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def _taken() -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder


def test_a_taken_metrics_port_is_named_with_the_flag_to_change(tmp_path):
    with _taken() as holder:
        taken = holder.getsockname()[1]
        proc = _serve(tmp_path, free_port(), taken)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"cannot serve /metrics on port {taken}" in proc.stderr
    assert "--metrics-port" in proc.stderr and "COVIAX_METRICS_PORT" in proc.stderr


def test_a_taken_grpc_port_is_named_with_the_flag_to_change(tmp_path):
    with _taken() as holder:
        taken = holder.getsockname()[1]
        proc = _serve(tmp_path, taken, 0)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"cannot listen for gRPC on 127.0.0.1:{taken}" in proc.stderr and "--port" in proc.stderr
