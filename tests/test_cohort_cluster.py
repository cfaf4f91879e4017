"""A cohort on a real multi-node Ray cluster on loopback, one worker node killed mid-run: no scan is lost.

``ray.cluster_utils.Cluster`` starts a head and two worker nodes in this test, each with 1 CPU and its
own raylet and object store (real processes, 127.0.0.1); the driver joins it by address as ``coviax
cohort run --address`` does. When the first scan finishes, the worker node that is analysing a scan
at that moment is killed without grace (its raylet and workers die); Ray reruns the lost task on
the surviving nodes (``max_retries``), and every scan ends done, without an extra attempt of ours.
The cluster is this test's own: shut down in teardown, no other Ray on the machine is touched.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service_support import make_small_series

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SCANS = 6
STORE = 80 * 1024 ** 2
LOOPBACK = "127.0.0.1"


@pytest.fixture
def cluster(monkeypatch):
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # Every address on loopback: Ray otherwise advertises the machine's outward address for the GCS
    # even when the nodes are given 127.0.0.1 (and then cannot reach its own GCS there).
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE,
                                                      "include_dashboard": False, "node_ip_address": LOOPBACK})
    workers = [c.add_node(num_cpus=1, object_store_memory=STORE, node_ip_address=LOOPBACK) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, _node_ip_address=LOOPBACK)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {LOOPBACK} and len(ray.nodes()) == 3
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


def _in_flight(out: Path) -> dict[str, str]:
    """scan id -> node (8 hex digits) of every scan a task is working on now."""
    found = {}
    for marker in (out / "scans").glob("*/work/node.txt"):
        try:
            found[marker.parent.parent.name] = marker.read_text().strip()
        except FileNotFoundError:  # moved to outputs/ just now
            pass
    return found


def test_killing_a_worker_node_loses_no_scan(cluster, tmp_path):
    from coviax_cohort.manifest import read_manifest
    from coviax_cohort.runner import RunSettings, plan, run_scans
    from coviax_cohort.table import collect

    c, workers = cluster
    lines = ["scan,subject,timepoint"]
    for i in range(SCANS):
        make_small_series(tmp_path / f"s{i}", n=10, z0=24 + 2 * i)
        lines.append(f"s{i},P{i},0")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    rows = read_manifest(tmp_path / "manifest.csv")
    out = tmp_path / "out"
    settings = RunSettings(out_dir=out, address=c.address, workers=3, max_attempts=1,
                           options={"engine": "kmeans", "outputs": ["report"]})
    todo, stats = plan(rows, settings)
    by_prefix = {w.node_id[:8]: w for w in workers}
    killed: dict = {}

    def kill_a_busy_worker(_stats):
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            busy = {scan: node for scan, node in _in_flight(out).items() if node in by_prefix}
            if busy:
                scan, node = sorted(busy.items())[0]
                c.remove_node(by_prefix[node], allow_graceful=False)
                # a scan that finished on that node between our look and the kill is not lost work; the
                # kill takes a moment to reach the node's workers (CI saw one finish there just after
                # remove_node returned), so look once the node is surely gone
                time.sleep(2.0)
                finished = {s for s in busy if (out / "scans" / s / "outputs" / "node.txt").is_file()}
                killed.update(node=node, scans=[s for s, n in busy.items() if n == node and s not in finished])
                return
            time.sleep(0.2)

    run_scans(todo, settings, stats, progress=kill_a_busy_worker)
    assert killed, "no worker node was busy when the first scan finished"
    print(f"killed node {killed['node']} while it analysed {killed['scans']}")
    table = {r["id"]: r for r in collect(rows, out)}
    assert [r["status"] for r in table.values()] == ["done"] * SCANS, [r["error"] for r in table.values()]
    assert all(r["attempts"] == 1 for r in table.values())  # Ray's retry, not a rerun of ours
    for scan in killed["scans"]:  # the scans of the killed node were finished elsewhere
        assert (out / "scans" / scan / "outputs" / "node.txt").read_text().strip() != killed["node"]
        assert table[scan]["node"] != killed["node"]
    assert stats.done == SCANS and stats.failed == 0
