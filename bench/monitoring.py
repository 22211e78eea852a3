"""Drift check speed and memory: modelcycle's profile-based check against Evidently's
DataDriftPreset, on the same 50 columns x 1,000,000 rows, in the same run.

    .venv/bin/python bench/monitoring.py [--rows 1000000] [--columns 50]

The data: a seeded reference and a current frame of `--rows` rows each; 35 numeric columns
(normal, log-normal and counts) and 15 categorical ones. Some columns shift a lot (a third
of a standard deviation, or a category's share moving by 15 points), some trivially (a
hundredth of a standard deviation), the rest not at all. Both frames are written to
Parquet, and each side runs in a process of its own that reads them, so that each peak RSS
is that side's own:

- **modelcycle**: `detect_drift` of the current rows against the reference's profile, which
  another process built from the reference rows first (timed apart: evaluation builds it
  once per model version);
- **Evidently**: `Report([DataDriftPreset()]).run(current, reference)`, in a virtualenv of
  its own under ~/.cache/modelcycle/bench-evidently (made here on first use: Evidently's
  pins clash with the lock).

Both sides use their default test per column. On a million rows both pick the normed
Wasserstein distance for numeric columns and the Jensen-Shannon distance for categorical
ones (Evidently's rules), so the verdicts are compared column by column. Targets: the same
verdicts, at least 5x faster, at most half of Evidently's peak memory (peak RSS of the
process; Evidently needs the reference rows in memory, a profile does not). The RSS each
side adds above the data it loaded (its RSS once loaded) is printed too. Memory is read
from /proc/self (Linux): VmHWM for the peak, which, unlike ru_maxrss, does not carry over
the parent's peak across exec.

Then the gateway: production (an aiohttp server of the fraud example's model), and two
gateways in front of it, monitoring off and on (its reference profile given, /metrics
scraped every second, so that the worker recomputes drift over the window all along). Each
record goes to production directly and through both gateways, back to back in a random
order; the median of the per-record differences is what each gateway adds. Target: at most
1 ms, bench/serving.py's target for the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from modelcycle.monitoring.stattests import STATTESTS

EVIDENTLY_VENV = Path.home() / ".cache" / "modelcycle" / "bench-evidently"
EVIDENTLY_METHODS = {"Wasserstein distance (normed)": "wasserstein", "Jensen-Shannon distance": "jensenshannon",
                     "K-S p_value": "ks", "chi-square p_value": "chisquare", "Z-test p_value": "z", "PSI": "psi"}
"""Evidently's display names of the tests both sides have."""

EVIDENTLY_SIDE = r'''
import json, resource, sys, time
import pandas as pd
reference = pd.read_parquet(sys.argv[1]); current = pd.read_parquet(sys.argv[2])
loaded = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024
from evidently import Report, Dataset, DataDefinition
from evidently.presets import DataDriftPreset
categorical = [c for c in reference.columns if not pd.api.types.is_numeric_dtype(reference[c])]
numeric = [c for c in reference.columns if c not in categorical]
definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
started = time.perf_counter()
snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(current, data_definition=definition),
                                          Dataset.from_pandas(reference, data_definition=definition))
result = snapshot.dict()
seconds = time.perf_counter() - started
verdicts = {}
for metric in result["metrics"]:
    config = metric.get("config", {})
    column = config.get("column")
    if column is not None and "ValueDrift" in str(config.get("type", "")):
        verdicts[column] = {"method": config.get("method"), "threshold": config.get("threshold"),
                            "score": metric["value"]}
print(json.dumps({"seconds": seconds, "loaded_kb": loaded,
                  "peak_kb": int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]), "columns": verdicts}))
'''

PROFILE_SIDE = r'''
import sys, time
import pandas as pd
from modelcycle.monitoring.profiles import ReferenceProfile, profile_column, profile_scores
reference = pd.read_parquet(sys.argv[1])
started = time.perf_counter()
columns = [profile_column(c, reference[c], "numeric" if pd.api.types.is_numeric_dtype(reference[c]) else "categorical")
           for c in reference.columns]
kind, scores = profile_scores("regression", probabilities=None, predictions=reference.iloc[:1000, 0].to_numpy())
profile = ReferenceProfile(task="regression", target="y", columns=columns, score_kind=kind, scores=scores)
seconds = time.perf_counter() - started
open(sys.argv[2] + ".profile.json", "w").write(profile.model_dump_json())
print(seconds)
'''

OURS_SIDE = r'''
import json, resource, sys, time
import pandas as pd
from modelcycle.monitoring.drift import detect_drift
from modelcycle.monitoring.profiles import ReferenceProfile
current = pd.read_parquet(sys.argv[2])
profile = ReferenceProfile.model_validate_json(open(sys.argv[2] + ".profile.json").read())
loaded = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024
started = time.perf_counter()
report = detect_drift(profile, current)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "profile_bytes": len(profile.model_dump_json()),
                  "loaded_kb": loaded, "peak_kb": int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]),
                  "columns": {c.column: {"method": c.stattest, "score": c.score, "drifted": c.drifted,
                                         "threshold": c.threshold} for c in report.columns}}))
'''


PRODUCTION_SIDE = r'''
import json, sys
import pandas as pd
from aiohttp import web
from modelcycle import artifacts
model = artifacts.load(sys.argv[1], sha256=sys.argv[2])
classes = [str(c) for c in model.classes]
async def predict(request):
    document = json.loads(await request.read())
    records = document.get("records", [document])
    proba = model.predict_proba(pd.DataFrame(records))
    return web.json_response({"model": "fraud", "model_version": "1", "predictions": [int(p) for p in model.decide(proba)],
                              "probabilities": [dict(zip(classes, row)) for row in proba.tolist()]})
async def ready(request):
    return web.json_response({"status": "ready"})
app = web.Application()
app.router.add_post("/predict", predict)
app.router.add_get("/readyz", ready)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[3]), print=None, access_log=None)
'''


def make_data(rows: int, columns: int, seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Reference and current frames, and what was done to each column."""
    rng = np.random.default_rng(seed)
    reference, current, truth = {}, {}, {}
    numeric = round(columns * 0.7)
    for i in range(columns):
        name = f"c{i:02d}"
        shift = ("drift", 0.33) if i % 5 == 0 else ("trivial", 0.01) if i % 5 == 1 else ("none", 0.0)
        truth[name] = shift[0]
        if i < numeric:
            shape = i % 3
            if shape == 0:
                reference[name], current[name] = rng.normal(0, 1, rows), rng.normal(shift[1], 1, rows)
            elif shape == 1:
                reference[name] = rng.lognormal(3, 0.8, rows)
                current[name] = rng.lognormal(3, 0.8, rows) * np.exp(0.8 * shift[1])
            else:
                reference[name] = rng.poisson(20, rows).astype(float)
                current[name] = rng.poisson(20 + 4.5 * shift[1] * 3, rows).astype(float)
        else:
            categories = np.array([f"v{k}" for k in range(5 + i % 10)])
            p = np.linspace(1, 2, len(categories))
            p /= p.sum()
            moved = p.copy()
            moved[0] += 0.45 * shift[1]
            moved /= moved.sum()
            reference[name] = categories[rng.choice(len(categories), rows, p=p)].astype(object)
            current[name] = categories[rng.choice(len(categories), rows, p=moved)].astype(object)
    return pd.DataFrame(reference), pd.DataFrame(current), truth


def evidently_python() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import evidently"], capture_output=True).returncode:
        print(f"installing Evidently into {EVIDENTLY_VENV} (once)", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", str(EVIDENTLY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "evidently", "pandas<3", "pyarrow"], check=True)
    return python


def run_side(python: Path | str, code: str, reference: Path, current: Path) -> dict:
    result = subprocess.run([str(python), "-c", code, str(reference), str(current)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode:
        raise SystemExit(f"{python}: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _fraud_model(workdir: Path):
    """The fraud example's logistic regression, saved, with its reference profile and held-out records."""
    import importlib.util

    import yaml

    from modelcycle import artifacts
    from modelcycle.evaluation import evaluate_model
    from modelcycle.lifecycle import reference_profile
    from modelcycle.spec import parse_spec
    from modelcycle.training import split_data, train_candidate

    example = Path(__file__).resolve().parents[1] / "examples" / "fraud"
    module_spec = importlib.util.spec_from_file_location("fraud_generate", example / "generate.py")
    generate = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(generate)
    spec_dict = yaml.safe_load((example / "modelcycle.yaml").read_text())
    spec_dict["training"].update(cv_folds=2, n_jobs=1)
    spec = parse_spec(spec_dict)
    splits = split_data(generate.generate(20_000), spec)
    (candidate,) = [c for c in spec.training.candidates if c.algorithm == "logistic_regression"]
    model, _ = train_candidate(spec, candidate.model_copy(update={"search_space": {}}), splits.train,
                               artifact_path=str(workdir / "candidate.joblib"))
    evaluation = evaluate_model(model, spec, validation=splits.validation, test=splits.test, out_of_time=None,
                                artifact_bytes=0)
    profile = reference_profile(spec, model, development=splits.development, test=splits.test, evaluation=evaluation)
    (workdir / "profile.json").write_text(profile.model_dump_json())
    sha, _ = artifacts.save(model, workdir / "model.joblib")
    live = generate.generate(2_000, seed=99, drift=0.5).drop(columns=[spec.data.target])
    return sha, json.loads(live.to_json(orient="records", date_format="iso"))


async def _triples(urls: dict[str, str], bodies: list[bytes], metrics_url: str, *, duration_s: float) -> dict:
    """Each body to production directly and through both gateways, back to back in a random
    order, while another task scrapes the monitoring gateway's /metrics every second."""
    import random

    import aiohttp

    rng = random.Random(0)
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    scrapes: list[float] = []
    async with aiohttp.ClientSession() as session:

        async def call(url: str, body: bytes) -> float:
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            return time.perf_counter() - started

        async def scrape() -> None:
            async with aiohttp.ClientSession() as scraper:
                while True:
                    started = time.perf_counter()
                    async with scraper.get(metrics_url) as response:
                        await response.read()
                    scrapes.append(time.perf_counter() - started)
                    await asyncio.sleep(1.0)

        for n in range(200):
            for url in urls.values():
                await call(url, bodies[n % len(bodies)])
        scraper = asyncio.create_task(scrape())
        deadline, n = time.perf_counter() + duration_s, 0
        while time.perf_counter() < deadline:
            names = list(urls)
            rng.shuffle(names)
            for name in names:
                latencies[name].append(await call(urls[name], bodies[n % len(bodies)]))
            n += 1
        scraper.cancel()
        async with session.get(metrics_url) as response:
            page = await response.text()
    rows = next((line.split()[-1] for line in page.splitlines() if line.startswith("modelcycle_monitoring_window_rows")),
                "absent")
    return {"latencies": latencies, "scrapes": scrapes, "window_rows": rows}


def gateway_overhead(duration_s: float) -> None:
    """What the gateway adds to production's p50, monitoring off and on."""
    import socket
    import statistics

    from modelcycle.serving.local import ServerProcess, stop_process, wait_ready

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        sha, records = _fraud_model(workdir)
        bodies = [json.dumps(record).encode() for record in records]
        servers = []

        def start(role: str, command: list[str], port: int) -> str:
            log = open(workdir / f"{role}.log", "wb")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            server = ServerProcess(role=role, url=f"http://127.0.0.1:{port}", process=process,
                                   log=workdir / f"{role}.log")
            servers.append(server)
            wait_ready(server)
            return server.url

        try:
            port = free_port()
            production = start("production", [sys.executable, "-c", PRODUCTION_SIDE, str(workdir / "model.joblib"), sha,
                                              str(port)], port)
            gateway = [sys.executable, "-m", "modelcycle.serving.gateway", "--production-url", production]
            port_off, port_on = free_port(), free_port()
            off = start("gateway-off", [*gateway, "--log-dir", str(workdir / "log-off"), "--port", str(port_off)],
                        port_off)
            on = start("gateway-on", [*gateway, "--log-dir", str(workdir / "log-on"), "--port", str(port_on),
                                      "--reference-profile", str(workdir / "profile.json"), "--monitoring-ttl", "0"],
                       port_on)
            result = asyncio.run(_triples({"direct": production + "/predict", "off": off + "/predict",
                                           "on": on + "/predict"}, bodies, on + "/metrics", duration_s=duration_s))
        finally:
            for server in servers:
                stop_process(server)
    latencies = result["latencies"]
    direct = latencies["direct"]
    print(f"gateway added p50, {len(direct):,} requests each way, one connection, /metrics scraped every second "
          f"({len(result['scrapes'])} scrapes, median {1000 * statistics.median(result['scrapes'] or [0]):.0f} ms; "
          f"window rows at the end: {result['window_rows']}):")
    for name, label in (("off", "gateway, monitoring off"), ("on", "gateway, monitoring on")):
        added = [1000 * (b - a) for a, b in zip(direct, latencies[name], strict=True)]
        print(f"  {label:25} p50 {1000 * statistics.median(latencies[name]):.2f} ms vs {1000 * statistics.median(direct):.2f}"
              f" ms direct; median added {statistics.median(added):.2f} ms (target <= 1 ms, bench/serving.py's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=50)
    parser.add_argument("--gateway-seconds", type=float, default=30.0,
                        help="how long to measure the gateway's added latency; 0 skips it")
    args = parser.parse_args()
    python = evidently_python()
    version = subprocess.run([str(python), "-c", "import evidently; print(evidently.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    reference, current, truth = make_data(args.rows, args.columns)
    with tempfile.TemporaryDirectory() as folder:
        paths = Path(folder) / "reference.parquet", Path(folder) / "current.parquet"
        reference.to_parquet(paths[0])
        current.to_parquet(paths[1])
        del reference, current
        profile_seconds = float(subprocess.run([sys.executable, "-c", PROFILE_SIDE, *map(str, paths)], check=True,
                                               capture_output=True, text=True).stdout.strip().splitlines()[-1])
        ours = {**run_side(sys.executable, OURS_SIDE, *paths), "profile_seconds": profile_seconds}
        theirs = run_side(python, EVIDENTLY_SIDE, *paths)
    same, compared, disagreements, other_tests = 0, 0, [], []
    for column, mine in ours["columns"].items():
        other = theirs["columns"].get(column)
        if other is None:
            continue
        method = EVIDENTLY_METHODS.get(str(other["method"]))
        if method != mine["method"]:
            other_tests.append(f"{column}: ours {mine['method']}, Evidently {other['method']}")
            continue
        compared += 1
        distance = STATTESTS[method].kind == "distance"
        their_drift = other["score"] >= other["threshold"] if distance else other["score"] < other["threshold"]
        if their_drift == mine["drifted"]:
            same += 1
        else:
            disagreements.append(f"{column} ({truth[column]}): ours {mine['score']:.4f}, Evidently {other['score']:.4f}")
    ours_extra = (ours["peak_kb"] - ours["loaded_kb"]) / 1024
    theirs_extra = (theirs["peak_kb"] - theirs["loaded_kb"]) / 1024
    print(f"drift check, {args.columns} columns x {args.rows:,} rows (Evidently {version}):")
    print(f"  modelcycle  {ours['seconds']:7.2f} s   peak RSS {ours['peak_kb'] / 1024:7.0f} MB "
          f"({ours_extra:6.0f} MB above the loaded data)   profile: {ours['profile_seconds']:.2f} s, "
          f"{ours['profile_bytes'] / 1024:.0f} kB")
    print(f"  Evidently   {theirs['seconds']:7.2f} s   peak RSS {theirs['peak_kb'] / 1024:7.0f} MB "
          f"({theirs_extra:6.0f} MB above the loaded data)")
    print(f"  speed-up {theirs['seconds'] / ours['seconds']:.1f}x (target >= 5x), "
          f"profile + check {theirs['seconds'] / (ours['seconds'] + ours['profile_seconds']):.1f}x")
    print(f"  peak memory: {ours['peak_kb'] / theirs['peak_kb']:.2f} of Evidently's (target <= 0.5); above the data "
          f"each side loads: {ours_extra / max(theirs_extra, 1):.2f}")
    print(f"  verdicts: {same} of {compared} columns the same where both used the same test (target: all)")
    drifted = sorted(c for c, r in ours["columns"].items() if r["drifted"])
    print(f"  drifted (ours): {len(drifted)}; planted shifts: {sum(t == 'drift' for t in truth.values())}, "
          f"trivial: {sum(t == 'trivial' for t in truth.values())}")
    for line in disagreements:
        print(f"    differs: {line}")
    for line in other_tests:
        print(f"    not the same test: {line}")
    if args.gateway_seconds:
        gateway_overhead(args.gateway_seconds)


if __name__ == "__main__":
    main()
