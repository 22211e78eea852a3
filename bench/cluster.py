"""Figures of the local control plane (modelcycle.cluster), measured on this machine.

Prints:
- the cold build time of each binary, as recorded by `tools/k8s/build.sh` in the cache;
- how long `tools/k8s/build.sh` takes with a warm cache (target: under 1 s);
- warm start-to-ready time of the full control plane (target: under 10 s), next to its
  floor measured in the same run: etcd + kube-apiserver answering /readyz, which is all
  that envtest starts;
- the resident memory of each component once idle, and how long `stop()` takes.

Run: .venv/bin/python bench/cluster.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

from modelcycle.cluster import ControlPlane, binaries

REPO = Path(__file__).resolve().parents[1]
START_TARGET = 10.0
WARM_BUILD_TARGET = 1.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cold_build_times() -> None:
    timings = binaries.cache_dir() / "timings.tsv"
    print(f"cold build ({timings}):")
    if not timings.exists():
        print("  no record: run `make k8s-bins` on an empty cache first")
        return
    total = 0
    for line in timings.read_text().splitlines():
        name, seconds, source, toolchain, when = line.split("\t")
        total += int(seconds)
        print(f"  {name:<24} {int(seconds):>5} s  {source.split()[0]}  {toolchain}  {when}")
    print(f"  {'total':<24} {total:>5} s")


def warm_build_time() -> None:
    began = time.monotonic()
    subprocess.run([REPO / "tools" / "k8s" / "build.sh"], check=True, capture_output=True)
    took = time.monotonic() - began
    print(f"warm tools/k8s/build.sh: {took:.2f} s (target < {WARM_BUILD_TARGET:g} s)")


def start_stop(runs: int, idle: float) -> None:
    ready, floor, stops = [], [], []
    rss: dict[str, list[float]] = {}
    for _ in range(runs):
        plane = ControlPlane()
        plane.start()
        ready.append(plane.timings["ready"])
        floor.append(plane.timings["kube-apiserver"])
        time.sleep(idle)
        for record in plane.records:
            rss.setdefault(record.name, []).append(rss_mb(record.pid))
        began = time.monotonic()
        plane.stop()
        stops.append(time.monotonic() - began)
    print(f"warm start-to-ready, median of {runs}:")
    print(f"  full control plane      {statistics.median(ready):6.2f} s (target < {START_TARGET:g} s)")
    print(f"  floor: etcd + apiserver {statistics.median(floor):6.2f} s (what envtest starts)")
    print(f"  stop                    {statistics.median(stops):6.2f} s")
    print(f"RSS after {idle:g} s idle, median of {runs}:")
    for name, values in rss.items():
        print(f"  {name:<24} {statistics.median(values):6.0f} MB")
    print(f"  {'total':<24} {sum(statistics.median(v) for v in rss.values()):6.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before RSS is read")
    args = parser.parse_args()
    cold_build_times()
    warm_build_time()
    start_stop(args.runs, args.idle)


if __name__ == "__main__":
    main()
