"""A cohort on a 3-node Ray cluster on 127.0.0.1, with a worker node killed mid-run (``make cohort-loopback``).

    python scripts/cohort_loopback.py MANIFEST OUT [--kill-after N]

Starts a head and two worker nodes with ``ray.cluster_utils.Cluster`` (real raylets and object
stores, 1 CPU each, every address on loopback), runs ``coviax cohort run MANIFEST --out OUT --address
<the head> --workers 3``, and once N scans are done (default 4) kills, without grace, a worker node
that is analysing a scan at that moment (its ``work/node.txt`` names the node). Every scan should
still end done: the run's exit code is the command's. The cluster is this script's own and is shut
down at the end; no other Ray on the machine is touched.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

STORE = 80 * 1024 ** 2
LOOPBACK = "127.0.0.1"


def _kill_a_busy_worker(cluster, workers, out: Path, after: int, said) -> None:
    by_prefix = {w.node_id[:8]: w for w in workers}
    while True:
        if len(list(out.glob("scans/*/DONE"))) >= after:
            for marker in out.glob("scans/*/work/node.txt"):
                try:
                    node = marker.read_text().strip()
                except FileNotFoundError:
                    continue
                if node in by_prefix:
                    cluster.remove_node(by_prefix[node], allow_graceful=False)
                    said(f"killed worker node {node} while it analysed {marker.parent.parent.name}")
                    return
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-after", type=int, default=4, help="scans done before a worker node is killed")
    args = parser.parse_args(argv)
    # Ray otherwise advertises the machine's outward address for the GCS even for loopback nodes.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    ray_constants.ENABLE_RAY_CLUSTER = False
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": STORE, "include_dashboard": False, "node_ip_address": LOOPBACK})
    workers = [cluster.add_node(num_cpus=1, object_store_memory=STORE, node_ip_address=LOOPBACK) for _ in range(2)]
    cluster.wait_for_nodes()
    said = lambda text: print(f"loopback: {text}", flush=True)  # noqa: E731
    said(f"head {cluster.address}, worker nodes {[w.node_id[:8] for w in workers]}")
    threading.Thread(target=_kill_a_busy_worker, args=(cluster, workers, args.out, args.kill_after, said),
                     daemon=True).start()
    from coviax.cli import main as coviax

    try:
        return coviax(["cohort", "run", args.manifest, "--out", str(args.out), "--address", cluster.address,
                       "--workers", "3"])
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
