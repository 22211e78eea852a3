"""Bench: serving one model over HTTP, next to its floors and a naive BentoML peer.

Same model (the fraud example's logistic regression, packaged by `modelcycle package`),
same requests (held-out records, one per request), one run. Each server runs in its own
process; the load comes from another process, an aiohttp client with a fixed number of
connections, each sending its next request when the last one is answered, bounded in
count and in time, to 127.0.0.1 only. Two loads per server: one connection (latency) and
`--concurrency` connections (throughput).

Rows printed, with p50, p99 and throughput:

- in-process: `predict_proba` and `decide` on a one-row DataFrame (the compute floor);
- HTTP echo: uvicorn with a bare ASGI app that returns the body (the HTTP floor);
- naive bento: a BentoML service that builds a DataFrame per request, one row per call,
  no batching (the peer);
- our bento: ``/predict`` (one model call per request, through the ONNX fast path when its
  parity check passes) and ``/predict_batch`` (adaptive batching merges concurrent requests
  into one model call); the same bento with the fast path off (``MODELCYCLE_FAST_PATH=0``):
  every request through the scikit-learn pipeline, as before the fast path;
- our bento ``/predict`` while a second bento (the shadow) takes the same load from another
  client: the work 100% mirroring adds to the machine, without a gateway;
- the gateway in front of our bento, mirroring off, and mirroring 100% to that second bento;
- a TCP relay in front of our bento (the proxy floor: one more process on the path, no
  HTTP), measured in the interleaved pairs below only.

The second bento is started the way `modelcycle serve` starts a shadow: at nice 10, so that
where the two share cores production keeps the CPU.

Targets, printed next to the figures: single-row p50 at most 1.5x (compute floor + HTTP
floor); the fast path's /predict p50 at least 5x below the scikit-learn path's and 6x below
the naive bento's; batched throughput at least 5x the naive bento's; the gateway adds at most 1 ms to
p50 and keeps at least 0.9x the throughput of ``/predict`` without it. With mirroring on,
it is compared both with our bento alone and with our bento next to a loaded shadow: on a
machine where the shadow shares production's cores, the shadow's own compute is the larger
cost, and only the second comparison isolates what the gateway adds. Those rows are
measured seconds apart, and here the model's own p50 drifts by more than a millisecond from
one slice to the next, so the bench also sends each record to our bento directly and
through the gateway back to back, in a random order, and reports the median of the
per-record differences: what the gateway adds, with the drift cancelled.

    .venv/bin/python bench/serving.py                 # about three minutes
    .venv/bin/python bench/serving.py --duration 10 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
"""Each row is measured in this many slices, interleaved with the other rows."""
EXAMPLE = ROOT / "examples" / "fraud"

NAIVE_SERVICE = '''
"""The peer: a straightforward BentoML service, one row per call, a DataFrame per request."""
import os

import bentoml
import pandas as pd

from modelcycle import artifacts


@bentoml.service(workers=1)
class Naive:
    def __init__(self):
        self.model = artifacts.load(os.environ["NAIVE_MODEL"], sha256=os.environ["NAIVE_SHA256"])

    @bentoml.api
    def predict(self, record: dict) -> dict:
        frame = pd.DataFrame([record])
        proba = self.model.predict_proba(frame)
        return {"prediction": self.model.decide(proba).tolist()[0],
                "probabilities": dict(zip(map(str, self.model.classes), proba[0].tolist()))}
'''


# -- the load generator and the echo server, each run as a process of its own -------------------

async def _load(url: str, bodies: list[bytes], *, concurrency: int, duration_s: float, max_requests: int,
                warmup: int) -> dict:
    import aiohttp

    run_id = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors = 0
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(warmup):
            async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as response:
                await response.read()
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker(offset: int) -> None:
            nonlocal errors, sent
            while sent < max_requests and time.perf_counter() < deadline:
                n = sent
                sent += 1
                t0 = time.perf_counter()
                async with session.post(url, data=bodies[(n + offset) % len(bodies)],
                                        headers={**headers, "X-Request-ID": f"bench-{run_id}-{offset}-{n}"}) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "elapsed": elapsed, "errors": errors}


async def _pairs(url_a: str, url_b: str, bodies: list[bytes], *, duration_s: float, warmup: int) -> dict:
    """One connection to each URL; the same body goes to both, back to back, in a random
    order, so that whatever drifts (the model's speed, the machine's load) drifts for both."""
    import random

    import aiohttp

    rng = random.Random(0)
    headers = {"content-type": "application/json"}
    latencies: dict[str, list[float]] = {"a": [], "b": []}
    async with aiohttp.ClientSession() as session:

        async def call(url: str, body: bytes) -> float:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers={**headers, "X-Request-ID": uuid.uuid4().hex}) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            return time.perf_counter() - t0

        for i in range(warmup):
            await call(url_a, bodies[i % len(bodies)])
            await call(url_b, bodies[i % len(bodies)])
        deadline = time.perf_counter() + duration_s
        n = 0
        while time.perf_counter() < deadline:
            body = bodies[n % len(bodies)]
            order = ("a", "b") if rng.random() < 0.5 else ("b", "a")
            for side in order:
                latencies[side].append(await call(url_a if side == "a" else url_b, body))
            n += 1
    return latencies


def _stats(latencies: list[float], elapsed: float, *, errors: int = 0) -> dict:
    ordered = sorted(latencies)
    return {"n": len(ordered), "errors": errors, "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "rps": len(ordered) / elapsed}


async def _relay(port: int, upstream_port: int) -> None:
    """The proxy floor: a TCP relay that pipes bytes both ways between each client connection
    and a connection of its own to the upstream. No HTTP, no logging: what one more process
    on the path costs on this machine, and no proxy written in Python can cost less."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
        finally:
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    await server.serve_forever()


def _echo_app():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


# -- the bench ---------------------------------------------------------------------------------

def _model(workdir: Path):
    """Train and register the example's logistic regression; return the registry, the model and records."""
    from modelcycle.registry import Registry
    from modelcycle.spec import parse_spec
    from modelcycle.training import split_data, train_candidate
    from modelcycle.validation import infer_schema

    module_spec = importlib.util.spec_from_file_location("fraud_generate", EXAMPLE / "generate.py")
    generate = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(generate)
    frame = generate.generate(20_000)
    spec_dict = yaml.safe_load((EXAMPLE / "modelcycle.yaml").read_text())
    spec_dict["training"].update(cv_folds=2, n_jobs=1)
    spec = parse_spec(spec_dict)
    splits = split_data(frame, spec)
    (candidate,) = [c for c in spec.training.candidates if c.algorithm == "logistic_regression"]
    model, _ = train_candidate(spec, candidate.model_copy(update={"search_space": {}}), splits.train,
                               artifact_path=str(workdir / "model.joblib"))
    model.schema = infer_schema(splits.train, spec)
    registry = Registry(workdir / "registry")
    gates = [{"name": "bench", "metric": "roc_auc", "op": ">=", "threshold": 0, "value": 1, "passed": True}]
    version = registry.register("fraud", model, lineage={}, params={"algorithm": "logistic_regression"},
                                metrics={}, gates=gates)
    test = splits.test.drop(columns=[spec.data.target]).head(500)
    records = json.loads(test.to_json(orient="records", date_format="iso"))
    return registry, version, model, records


def _in_process(model, records: list[dict], duration_s: float) -> dict:
    import pandas as pd

    latencies = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < duration_s and i < 100_000:
        t0 = time.perf_counter()
        frame = pd.DataFrame([records[i % len(records)]])
        model.decide(model.predict_proba(frame))
        latencies.append(time.perf_counter() - t0)
        i += 1
    return {"latencies": latencies, "elapsed": time.perf_counter() - started, "errors": 0}


def _load_process(url: str, bodies_file: Path, *, concurrency: int, duration_s: float) -> dict:
    return _run_internal(["load", url, str(bodies_file), "--concurrency", str(concurrency)], duration_s=duration_s)


def _pairs_process(url_a: str, url_b: str, bodies_file: Path, *, duration_s: float) -> dict:
    return _run_internal(["pairs", url_a, url_b, str(bodies_file)], duration_s=duration_s)


def _run_internal(args: list[str], *, duration_s: float) -> dict:
    """Run one of this script's internal load commands in a process of its own; its JSON."""
    command = [sys.executable, "-P", __file__, *args, "--duration", str(duration_s)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


@contextlib.contextmanager
def _background_load(url: str | None, bodies_file: Path, *, concurrency: int, duration_s: float):
    if url is None:
        yield
        return
    command = [sys.executable, "-P", __file__, "load", url, str(bodies_file), "--concurrency", str(concurrency),
               "--duration", str(duration_s + 1)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.wait(timeout=duration_s + 120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    pairs = sub.add_parser("pairs", help="(internal) interleave single requests to two URLs")
    pairs.add_argument("url_a")
    pairs.add_argument("url_b")
    pairs.add_argument("bodies", type=Path)
    pairs.add_argument("--duration", type=float, default=5.0)
    pairs.add_argument("--warmup", type=int, default=20)
    load = sub.add_parser("load", help="(internal) generate load")
    load.add_argument("url")
    load.add_argument("bodies", type=Path)
    load.add_argument("--concurrency", type=int, default=1)
    load.add_argument("--duration", type=float, default=5.0)
    load.add_argument("--max-requests", type=int, default=200_000)
    load.add_argument("--warmup", type=int, default=20)
    echo = sub.add_parser("echo", help="(internal) the HTTP floor: an echo server")
    echo.add_argument("--port", type=int, required=True)
    relay = sub.add_parser("relay", help="(internal) the proxy floor: a TCP relay")
    relay.add_argument("upstream_port", type=int)
    relay.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per load")
    parser.add_argument("--concurrency", type=int, default=32, help="connections of the throughput load")
    args = parser.parse_args()

    if args.command == "pairs":
        bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line]
        print(json.dumps(asyncio.run(_pairs(args.url_a, args.url_b, bodies, duration_s=args.duration,
                                            warmup=args.warmup))))
        return
    if args.command == "load":
        bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line]
        result = asyncio.run(_load(args.url, bodies, concurrency=args.concurrency, duration_s=args.duration,
                                   max_requests=args.max_requests, warmup=args.warmup))
        print(json.dumps(result))
        return
    if args.command == "relay":
        asyncio.run(_relay(args.port, args.upstream_port))
        return
    if args.command == "echo":
        import uvicorn

        uvicorn.run(_echo_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
        return
    with tempfile.TemporaryDirectory(prefix="modelcycle-bench-serving-") as tmp:
        run(Path(tmp), duration_s=args.duration, concurrency=args.concurrency)


def run(workdir: Path, *, duration_s: float, concurrency: int) -> None:
    from modelcycle.serving.local import ServerProcess, free_port, serve_bento, start_process, stop_process, wait_ready
    from modelcycle.serving.packaging import bentoml_env, package

    print("training and packaging the model ...", flush=True)
    registry, version, model, records = _model(workdir)
    bento = package(registry, f"fraud@{version.version}", workdir=workdir)
    single = workdir / "single.jsonl"
    single.write_text("".join(json.dumps({"records": [r]}) + "\n" for r in records))
    naive_bodies = workdir / "naive.jsonl"
    naive_bodies.write_text("".join(json.dumps({"record": r}) + "\n" for r in records))
    (workdir / "naive").mkdir()
    (workdir / "naive" / "naive_service.py").write_text(NAIVE_SERVICE)

    servers: list[ServerProcess] = []

    def start(role: str, command: list[str], **kwargs) -> ServerProcess:
        port = free_port()
        server = start_process(role, [*command, "--port", str(port)], url=f"http://127.0.0.1:{port}",
                               log=workdir / f"{role}.log", **kwargs)
        servers.append(server)
        return server

    try:
        echo = start("echo", [sys.executable, "-P", __file__, "echo"])
        naive_env = {**bentoml_env(workdir), "NAIVE_SHA256": version.sha256,
                     "NAIVE_MODEL": str(workdir / "registry" / "fraud" / "versions" / "1" / "model.joblib")}
        naive = start("naive", [sys.executable, "-m", "bentoml", "serve", "naive_service:Naive", "--host", "127.0.0.1"],
                      env=naive_env, cwd=workdir / "naive")
        ours = serve_bento(bento, role="production", workdir=workdir)
        shadow = serve_bento(bento, role="shadow", workdir=workdir)
        with _environment(MODELCYCLE_FAST_PATH="0"):  # the same bento answering through scikit-learn
            sklearn_path = serve_bento(bento, role="sklearn-path", workdir=workdir, niceness=0)
        servers.extend([ours, shadow, sklearn_path])
        for server in (echo, naive, ours, shadow, sklearn_path):
            wait_ready(server, path="/" if server is echo else "/readyz")
        gateway = [sys.executable, "-m", "modelcycle.serving.gateway", "--production-url", ours.url]
        gateway_off = start("gateway-off", [*gateway, "--mirror-percent", "0", "--log-dir", str(workdir / "log-off")])
        gateway_on = start("gateway-on", [*gateway, "--shadow-url", shadow.url, "--mirror-percent", "100",
                                          "--log-dir", str(workdir / "log-on")])
        relay = start("relay", [sys.executable, "-P", __file__, "relay", ours.url.rsplit(":", 1)[1]])
        for server in (gateway_off, gateway_on, relay):
            wait_ready(server)
        configs = [  # label, URL, bodies, a URL that gets the same load meanwhile
            ("HTTP echo (HTTP floor)", echo.url + "/", single, None),
            ("naive bento (peer)", naive.url + "/predict", naive_bodies, None),
            ("our bento /predict", ours.url + "/predict", single, None),
            ("our bento /predict, scikit-learn path", sklearn_path.url + "/predict", single, None),
            ("our bento /predict_batch", ours.url + "/predict_batch", single, None),
            ("gateway, mirroring off", gateway_off.url + "/predict", single, None),
            ("our bento /predict, shadow loaded too", ours.url + "/predict", single, shadow.url + "/predict"),
            ("gateway, mirroring 100%", gateway_on.url + "/predict", single, None),
        ]
        # Rounds, each measuring every row for a slice of the time: a machine whose load
        # changes during the run (other builds, say) then skews every row alike.
        slice_s = duration_s / ROUNDS
        paired: dict[str, list[dict]] = {}
        raw: dict[str, dict[str, list]] = {label: {"latency": [], "throughput": []}
                                           for label in ["in-process predict (compute floor)", *(c[0] for c in configs)]}
        for round_ in range(ROUNDS):
            print(f"round {round_ + 1} of {ROUNDS} ...", flush=True)
            run_ = _in_process(model, records, slice_s)
            raw["in-process predict (compute floor)"]["latency"].append(run_)
            raw["in-process predict (compute floor)"]["throughput"].append(run_)
            for label, url, bodies, alongside in configs:
                for load, connections in (("latency", 1), ("throughput", concurrency)):
                    with _background_load(alongside, bodies, concurrency=connections, duration_s=slice_s):
                        raw[label][load].append(_load_process(url, bodies, concurrency=connections,
                                                              duration_s=slice_s))
            for label, url in (("TCP relay (proxy floor)", relay.url), ("gateway, mirroring off", gateway_off.url),
                               ("gateway, mirroring 100%", gateway_on.url)):
                paired.setdefault(label, []).append(_pairs_process(ours.url + "/predict", url + "/predict", single,
                                                                   duration_s=slice_s))
    finally:
        for server in reversed(servers):
            stop_process(server)  # the gateways flush their logs on SIGTERM
    results = {}
    for label, loads in raw.items():
        merged = {load: _stats([x for r in runs for x in r["latencies"]], sum(r["elapsed"] for r in runs),
                               errors=sum(r["errors"] for r in runs)) for load, runs in loads.items()}
        results[label] = {**merged["latency"], "throughput": merged["throughput"]}
    results["TCP relay (proxy floor)"] = {}
    for label, runs in paired.items():
        direct = [x for r in runs for x in r["a"]]
        through = [x for r in runs for x in r["b"]]
        results[label]["paired"] = {
            "n": len(direct), "direct_p50_ms": 1000 * statistics.median(direct),
            "gateway_p50_ms": 1000 * statistics.median(through),
            "added_p50_ms": 1000 * statistics.median(b - a for a, b in zip(direct, through, strict=True)),
        }
    results["gateway, mirroring 100%"]["shadow"] = _shadow_answers(workdir / "log-on")
    report(results, concurrency=concurrency)


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the servers started inside, then restore them."""
    import os

    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _shadow_answers(log_dir: Path) -> dict:
    """How many of the mirrored requests the shadow answered, from the gateway's log."""
    from modelcycle.monitoring.predictions import read_prediction_log

    log = read_prediction_log(log_dir)
    mirrored = log[log["mirrored"]]
    return {"mirrored": len(mirrored), "answered": int((mirrored["shadow_status"] == 200).sum())}


def report(results: dict[str, dict], *, concurrency: int) -> None:
    print(f"\nserving one fraud record per request; latency at 1 connection, throughput at {concurrency}")
    print(f"{'':38} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}   {'thr. p50':>8} {'thr. p99':>8} {'errors':>6}")
    for label, r in results.items():
        if "throughput" not in r:
            continue
        t = r["throughput"]
        print(f"{label:38} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {t['rps']:8.0f}   {t['p50_ms']:8.2f} "
              f"{t['p99_ms']:8.2f} {r['errors'] + t['errors']:6d}")

    def get(label: str) -> dict | None:
        return results.get(label)

    compute, echo, naive = get("in-process predict (compute floor)"), get("HTTP echo (HTTP floor)"), get("naive bento (peer)")
    ours, batch = get("our bento /predict"), get("our bento /predict_batch")
    print("\ntargets")
    floors = compute["p50_ms"] + echo["p50_ms"]
    print(f"  single-row p50 <= 1.5 x (compute floor + HTTP floor): {ours['p50_ms']:.2f} ms vs 1.5 x {floors:.2f} = "
          f"{1.5 * floors:.2f} ms ({ours['p50_ms'] / floors:.2f}x)  {_verdict(ours['p50_ms'] <= 1.5 * floors)}")
    slow = get("our bento /predict, scikit-learn path")
    print(f"  fast path: /predict p50 {ours['p50_ms']:.2f} ms vs {slow['p50_ms']:.2f} ms through scikit-learn = "
          f"{slow['p50_ms'] / ours['p50_ms']:.1f}x lower (>= 5x)  {_verdict(slow['p50_ms'] >= 5 * ours['p50_ms'])}; "
          f"vs the naive bento {naive['p50_ms']:.2f} ms = {naive['p50_ms'] / ours['p50_ms']:.1f}x lower (>= 6x)  "
          f"{_verdict(naive['p50_ms'] >= 6 * ours['p50_ms'])}")
    ratio = batch["throughput"]["rps"] / naive["throughput"]["rps"]
    print(f"  batched throughput >= 5 x naive bento: {batch['throughput']['rps']:.0f} vs {naive['throughput']['rps']:.0f} "
          f"req/s ({ratio:.1f}x)  {_verdict(ratio >= 5)}")
    for label, base_label in (("gateway, mirroring off", "our bento /predict"),
                              ("gateway, mirroring 100%", "our bento /predict, shadow loaded too"),
                              ("gateway, mirroring 100%", "our bento /predict")):
        gw, base = get(label), get(base_label)
        added = gw["p50_ms"] - base["p50_ms"]
        kept = gw["throughput"]["rps"] / base["throughput"]["rps"]
        print(f"  {label} vs {base_label}: adds {added:+.2f} ms to p50 (<= 1 ms)  {_verdict(added <= 1.0)}; "
              f"keeps {kept:.2f}x throughput (>= 0.9x)  {_verdict(kept >= 0.9)}")
    print("\ninterleaved pairs: each record sent to our bento directly and through a proxy, back to back")
    floor = get("TCP relay (proxy floor)")["paired"]
    print(f"  TCP relay (proxy floor): p50 {floor['gateway_p50_ms']:.2f} ms vs {floor['direct_p50_ms']:.2f} ms direct "
          f"({floor['n']} pairs); median added per record {floor['added_p50_ms']:+.2f} ms")
    for label in ("gateway, mirroring off", "gateway, mirroring 100%"):
        p = get(label)["paired"]
        print(f"  {label}: p50 {p['gateway_p50_ms']:.2f} ms vs {p['direct_p50_ms']:.2f} ms direct ({p['n']} pairs); "
              f"median added per record {p['added_p50_ms']:+.2f} ms (<= 1 ms)  {_verdict(p['added_p50_ms'] <= 1.0)}, "
              f"{p['added_p50_ms'] - floor['added_p50_ms']:+.2f} ms over the proxy floor")
    shadow = get("gateway, mirroring 100%")["shadow"]
    print(f"  mirroring 100%: the shadow answered {shadow['answered']} of {shadow['mirrored']} mirrored requests")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    main()
