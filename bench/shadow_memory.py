"""Memory of the gateway's shadow comparison worker, against a floor.

    .venv/bin/python bench/shadow_memory.py [--requests 100000] [--records-per-request 1]

A prediction log of `--requests` mirrored requests (each with a fraud-like record of nine
fields, a binary production answer and the shadow's) is written with PredictionLogWriter in
64 MiB segments, as the gateway writes it. Then three processes, each importing the same
libraries (numpy, pandas, scipy.stats, the monitoring modules) before it reads anything, so
that the difference between their peaks is the data's:

- **floor**: reads every segment's raw bytes in blocks and counts the lines: what any
  reader of the files pays;
- **follower**: `compare_followed_log` twice (a first look, then after nothing changed), what
  the gateway's worker does now: `ShadowEvidenceReader`, a few numbers per request;
- **before**: what the worker did before it: a `PredictionLogReader(keep_records=False)` that
  keeps every joined entry, and `compare_shadow` on its frame.

Each prints its peak RSS (VmHWM from /proc/self/status, Linux) and its RSS before reading;
the bench prints both, the peak above the floor's, and checks that the follower and
`before` give the same comparison. Target: the follower's peak above the floor at most a
tenth of `before`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDE = r'''
import json, sys, time
import numpy, pandas, scipy.stats  # noqa: F401 - every side pays the same imports
from modelcycle.monitoring.predictions import PredictionLogReader, segment_paths
from modelcycle.monitoring.shadow import compare_followed_log, compare_shadow

def rss_kb(field):
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1])

mode, log_dir = sys.argv[1], sys.argv[2]
loaded = rss_kb("VmRSS")
started = time.perf_counter()
result = {}
if mode == "floor":
    lines = 0
    for path in segment_paths(log_dir):
        with open(path, "rb") as segment:
            while block := segment.read(1 << 20):
                lines += block.count(b"\n")
    result["lines"] = lines
elif mode == "follower":
    compare_followed_log(log_dir)
    result["comparison"] = compare_followed_log(log_dir).model_dump(mode="json", exclude={"computed_at"})
else:
    reader = PredictionLogReader(log_dir, keep_records=False).refresh()
    result["comparison"] = compare_shadow(reader.refresh().frame()).model_dump(mode="json", exclude={"computed_at"})
result.update(loaded_kb=loaded, peak_kb=rss_kb("VmHWM"), seconds=time.perf_counter() - started)
print(json.dumps(result))
'''


def write_log(log_dir: Path, *, requests: int, records: int, seed: int = 0) -> int:
    """A log like the gateway's for a fraud model with a shadow that mostly agrees."""
    from modelcycle.monitoring.predictions import PredictionLogWriter

    rng = random.Random(seed)
    channels, countries = ["online", "pos", "atm"], ["DE", "FR", "US", "ZZ", "GB"]
    with PredictionLogWriter(log_dir) as log:
        for n in range(requests):
            batch = [{
                "ts": f"2026-01-{1 + n % 28:02d}T13:21:{n % 60:02d}", "amount": round(rng.lognormvariate(3, 1), 2),
                "merchant_category": rng.choice(["grocery", "travel", None]), "channel": rng.choice(channels),
                "country": rng.choice(countries), "customer_age": rng.randint(18, 90),
                "account_age_days": rng.randint(1, 4000), "tx_last_24h": rng.randint(0, 20),
                "distance_from_home_km": round(rng.expovariate(0.05), 1),
            } for _ in range(records)]
            positives = [rng.random() for _ in range(records)]
            request_id = f"{rng.getrandbits(128):032x}"

            def answer(version: str, scores: list[float], latency: float) -> dict:
                return {"model": "fraud", "version": version, "predictions": [int(p > 0.5) for p in scores],
                        "probabilities": [{"0": 1 - p, "1": p} for p in scores], "latency_ms": latency,
                        "status": 200, "error": None}

            log.write_request(request_id=request_id, client_request_id=None, records=batch,
                              production=answer("1", positives, rng.gammavariate(9, 0.2)), mirrored=True,
                              shadow_reason="pending")
            shadow = [min(1.0, max(0.0, p + rng.gauss(0, 0.02))) for p in positives]
            log.write_shadow(request_id=request_id, shadow=answer("2", shadow, rng.gammavariate(9, 0.2)))
    return sum(path.stat().st_size for path in log_dir.iterdir())


def side(mode: str, log_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", SIDE, mode, str(log_dir)], capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONHASHSEED": "0"})
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--records-per-request", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shadow-memory-") as folder:
        log_dir = Path(folder) / "log"
        started = time.perf_counter()
        size = write_log(log_dir, requests=args.requests, records=args.records_per_request)
        print(f"log: {args.requests:,} requests x {args.records_per_request} record(s), {size / 2**20:.1f} MiB "
              f"in {len(list(log_dir.iterdir()))} segment(s), written in {time.perf_counter() - started:.1f} s")
        results = {mode: side(mode, log_dir) for mode in ("floor", "follower", "before")}
    floor = results["floor"]["peak_kb"]
    print(f"{'':10} {'RSS before reading':>19} {'peak RSS':>10} {'above floor':>12} {'per request':>12} {'seconds':>8}")
    for mode, result in results.items():
        above = result["peak_kb"] - floor
        print(f"{mode:10} {result['loaded_kb'] / 1024:>16.1f} MB {result['peak_kb'] / 1024:>7.1f} MB "
              f"{above / 1024:>9.1f} MB {above * 1024 / args.requests:>8.0f} B {result['seconds']:>8.2f}")
    follower, before = (results[m]["peak_kb"] - floor for m in ("follower", "before"))
    same = results["follower"]["comparison"] == results["before"]["comparison"]
    print(f"same comparison from both: {same}")
    ratio = follower / before if before > 0 else float("nan")
    print(f"follower above the floor / before above the floor: {ratio:.3f} (target <= 0.1): "
          f"{'PASS' if ratio <= 0.1 and same else 'FAIL'}")


if __name__ == "__main__":
    main()
