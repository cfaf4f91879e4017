#!/usr/bin/env bash
# `make run`: the COViaX service on localhost with its embedded defaults (K-means
# engine, CPU), the demo client on the bundled real chest CT, the result printed,
# the artifacts left in OUT (default ./out), the server stopped. Ctrl-C stops all.
#
#   bash scripts/demo.sh [OUT]      (needs `coviax` and `coviax-client` on PATH)
#
# Environment: DEMO_PORT (gRPC port, default: a free one), DEMO_ENGINE (unet, the shipped U-Net B).
# Research use only; not a medical device.
set -euo pipefail

OUT=${1:-out}
PY=${PYTHON:-python}
command -v coviax >/dev/null || { echo "demo: coviax is not on PATH (run make setup)" >&2; exit 2; }
command -v "$PY" >/dev/null || PY=python3

PORT=${DEMO_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
DATA=$(mktemp -d "${TMPDIR:-/tmp}/coviax-demo.XXXXXX")
SCAN=$("$PY" -c 'from coviax.cli import sample_scan_path; print(sample_scan_path())')
SERVER_PID=""

cleanup() {
    trap - EXIT INT TERM
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "demo: stopping the server (SIGTERM: drain, then exit)" >&2
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

echo "demo: starting coviax serve on 127.0.0.1:$PORT (data in $DATA)" >&2
coviax serve --host 127.0.0.1 --port "$PORT" --metrics-port 0 --data-dir "$DATA" \
    --engine "${DEMO_ENGINE:-unet}" --drain-seconds 10 &
SERVER_PID=$!

coviax-client health --server "127.0.0.1:$PORT" --wait 120 >/dev/null
echo "demo: server is SERVING; sending the sample chest CT ($SCAN)" >&2
coviax-client segment "$SCAN" --server "127.0.0.1:$PORT" --out "$OUT"
