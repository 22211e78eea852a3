"""`modelcycle loop`: the whole lifecycle on this machine with no human.

`LocalLoop` serves the champion behind the gateway (`modelcycle serve`'s `LocalServing`) and,
at every `tick`, reads what the gateway measured (the same endpoints the operator reads on
Kubernetes):

1. with a shadow: ``GET /shadow/comparison``. Promote makes the shadow the champion; reject
   drops the challenger alias and production stays; either way the loop serves the champion
   alone again. Hold waits for more traffic;
2. without one: ``GET /monitoring``, drift and live performance over the window. A breach
   the spec's ``monitoring.retrain`` allows, admitted by its guard rails (one retraining at a
   time, the cooldown, the daily cap: `modelcycle.monitoring.retraining`), runs the pipeline
   on the newest data. Validation refusing that data stops the run before training; a
   version that fails a gate is kept as rejected; production stays as it was in both
   cases, and the loop says why. A version that passes its gates is the challenger, and is
   served as shadow next to production.

Every attempt is kept in ``WORKDIR/loop/NAME.json`` (`RetrainLedger`), so the guard rails
hold across restarts; a loop started while a challenger exists serves it as shadow again.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from modelcycle.cli.common import (
    DEFAULT_WORKDIR,
    EXIT_FAILURE,
    EXIT_USAGE,
    RegistryOpt,
    SpecArg,
    WorkdirOpt,
    _fail,
    _registry,
    _spec,
    console,
)

commands = typer.Typer()

GATEWAY_TIMEOUT_S = 120.0
"""How long a monitoring or comparison answer may take: the gateway's worker parses the log first."""


@dataclass
class Step:
    """What one tick did: `kind` is one of watching, hold, promoted, rejected, held_back,
    invalid_data, failed, shadow."""

    kind: str
    message: str
    details: list[str] = field(default_factory=list)


@dataclass
class LocalLoop:
    spec_path: Path
    workdir: Path
    registry_uri: str | None = None
    port: int = 8080
    host: str = "127.0.0.1"
    policy_file: Path | None = None
    """The shadow's promotion policy (JSON of `ShadowPolicy`); the gateway's defaults otherwise."""
    monitoring_ttl_s: float | None = None
    """How long the gateway reuses a monitoring result; its default (30 s) when None."""
    say: Callable[[str], None] = print
    serving: Any = None

    def __post_init__(self) -> None:
        from modelcycle.monitoring.retraining import RetrainLedger

        self.spec = _spec(self.spec_path)
        self.registry = _registry(self.registry_uri, self.workdir)
        self.ledger = RetrainLedger(self.workdir / "loop" / f"{self.spec.name}.json")

    # -- serving --------------------------------------------------------------------------

    def start(self) -> None:
        """Train a first version if the model has no champion, then serve the champion, and
        the challenger as its shadow if there is one."""
        from modelcycle.registry import ModelNotFound

        name = self.spec.name
        try:
            self.registry.get(name, "champion")
        except ModelNotFound:
            from modelcycle.cli.project import TrainingFailed

            self.say(f"[b]{name}[/] has no champion yet: training the first version")
            try:
                version = self._train()
            except TrainingFailed as exc:
                raise _fail(str(exc), exc.code) from None
            if version.status == "rejected":
                raise _fail(f"{name}@{version.version} failed its gates, so there is nothing to serve: "
                            + "; ".join(g.describe() for g in version.gates if not g.passed))
        try:
            challenger = self.registry.get(name, "challenger").version
        except ModelNotFound:
            challenger = None
        self._serve(shadow=challenger)

    def _serve(self, *, shadow: int | None) -> None:
        from modelcycle.serving.local import LocalServing

        self.stop()
        self.serving = LocalServing(registry=self.registry, workdir=self.workdir, model=f"{self.spec.name}@champion",
                                    shadow=None if shadow is None else str(shadow), port=self.port, host=self.host,
                                    policy_file=self.policy_file, monitoring_ttl_s=self.monitoring_ttl_s,
                                    say=lambda text: None)
        self.serving.start()
        production, shadow_version = self.serving.production_version, self.serving.shadow_version
        self.say(f"serving {self.spec.name}@{production.version} (champion) at {self.url}"
                 + (f", {self.spec.name}@{shadow_version.version} as shadow on mirrored traffic" if shadow_version else ""))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.serving is not None:
            self.serving.stop()
            self.serving = None

    def _get(self, path: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=GATEWAY_TIMEOUT_S) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"GET {self.url}{path}: HTTP {exc.code}: {exc.read()[:300]!r}") from None

    # -- one look -------------------------------------------------------------------------

    def tick(self) -> Step:
        """Look at what the gateway measured and act on it, once."""
        if self.serving is None:
            raise RuntimeError("the loop is not serving: call start() first")
        self.serving.check_alive()
        if self.serving.shadow_version is not None:
            return self._judge_shadow()
        return self._watch()

    def _judge_shadow(self) -> Step:
        from modelcycle.monitoring.retraining import now_utc

        name, shadow = self.spec.name, self.serving.shadow_version.version
        comparison = self._get("/shadow/comparison")
        verdict, reasons = comparison["verdict"], comparison["reasons"]
        if verdict == "hold":
            return Step("hold", f"shadow {name}@{shadow}: hold, {comparison['compared_requests']:,} requests "
                        f"compared (policy needs {comparison['policy']['min_requests']:,})", reasons)
        attempt = self._attempt_for(shadow)
        summary = "; ".join(reasons)
        if verdict == "promote":
            before = self.serving.production_version.version
            self.registry.set_alias(name, "champion", shadow)
            self.registry.remove_alias(name, "challenger")
            self.registry.annotate(name, shadow, promoted_from=str(before), shadow_verdict=f"promote: {summary}"[:500])
            if attempt is not None:
                self.ledger.update(attempt, outcome="promoted", finished_at=now_utc(),
                                   message=f"promoted over {name}@{before}")
            step = Step("promoted", f"shadow {name}@{shadow} promoted: it is the champion, "
                        f"replacing {name}@{before}", reasons)
        else:
            self.registry.remove_alias(name, "challenger")
            self.registry.annotate(name, shadow, shadow_verdict=f"reject: {summary}"[:500])
            if attempt is not None:
                self.ledger.update(attempt, outcome="rejected", finished_at=now_utc(),
                                   message=f"shadow verdict reject: {summary}")
            step = Step("rejected", f"shadow {name}@{shadow} rejected; production stays "
                        f"{name}@{self.serving.production_version.version}", reasons)
        self._serve(shadow=None)
        return step

    def _attempt_for(self, version: int):
        return next((a for a in reversed(self.ledger.attempts()) if a.version == version and a.outcome == "shadow"),
                    None)

    def _watch(self) -> Step:
        from modelcycle.monitoring.retraining import RetrainBusy, admit, breach, now_utc

        result = self._get("/monitoring")
        policy = self.spec.monitoring.retrain
        trigger = breach(result["verdict"], result["rows"], policy)
        if trigger is None:
            why = (f" (a breach needs {policy.min_rows:,} rows to retrain)" if result["verdict"] != "ok"
                   and result["rows"] < policy.min_rows else "")
            return Step("watching", f"verdict {result['verdict']} on {result['rows']:,} live rows{why}",
                        result["reasons"])
        admission = admit(self.ledger.attempts(), policy, now=now_utc())
        if not admission.allowed:
            return Step("held_back", f"{trigger} found, not retraining: {admission.reason}", result["reasons"])
        try:
            attempt = self.ledger.begin(trigger, result["reasons"], now=now_utc())
        except RetrainBusy as exc:
            return Step("held_back", f"{trigger} found, not retraining: {exc}", result["reasons"])
        self.say(f"[yellow]{trigger}[/] on {result['rows']:,} live rows: "
                 + "; ".join(escape(r) for r in result["reasons"]))
        self.say("retraining on the newest data")
        from modelcycle.cli.project import TrainingFailed

        try:
            version = self._train()
        except TrainingFailed as exc:
            outcome = "invalid_data" if exc.code == 4 else "failed"
            self.ledger.update(attempt, outcome=outcome, finished_at=now_utc(), message=str(exc).splitlines()[0])
            what = "the newest data failed validation, so nothing was trained on it" if outcome == "invalid_data" \
                else "the pipeline failed"
            return Step(outcome, f"{what}; production stays {self.spec.name}@"
                        f"{self.serving.production_version.version}", str(exc).splitlines())
        if version.status == "rejected":
            failed = [g.describe() for g in version.gates if not g.passed]
            self.ledger.update(attempt, outcome="rejected", version=version.version, finished_at=now_utc(),
                               message="failed gates: " + "; ".join(failed))
            return Step("rejected", f"{self.spec.name}@{version.version} failed its gates and is kept as rejected; "
                        f"production stays {self.spec.name}@{self.serving.production_version.version}", failed)
        self.ledger.update(attempt, outcome="shadow", version=version.version)
        self._serve(shadow=version.version)
        return Step("shadow", f"{self.spec.name}@{version.version} registered as challenger and serving as shadow")

    def _train(self):
        from modelcycle.cli.project import train

        version, _ = train(self.spec_path, self.workdir, self.registry_uri)
        self.say(f"registered {version.name}@{version.version} ({version.status}"
                 + (f", aliases {', '.join(version.aliases)}" if version.aliases else "") + ")")
        return version


def print_step(step: Step) -> None:
    color = {"promoted": "green", "shadow": "cyan", "watching": "dim", "hold": "dim"}.get(step.kind, "yellow")
    console.print(f"[{color}]{step.kind}[/]: {escape(step.message)}", highlight=False)
    for detail in step.details:
        console.print(f"  - {escape(detail)}", highlight=False)


@commands.command()
def loop(
    spec: SpecArg = Path("modelcycle.yaml"),
    every: Annotated[float, typer.Option(help="Seconds between two looks at the gateway's measurements.")] = 60.0,
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 8080,
    host: Annotated[str, typer.Option(help="The address every server binds.")] = "127.0.0.1",
    policy: Annotated[Optional[Path], typer.Option(
        "--policy", help="The shadow's promotion policy, a JSON file of its thresholds (min_requests, "
        "min_agreement, max_latency_ratio, max_error_rate, confidence).")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
) -> None:
    """Run the lifecycle with no human: serve the champion, watch drift and live metrics, retrain
    on a breach (one at a time, with the spec's cooldown and daily cap), serve the new version
    as shadow, and promote or reject it on the shadow verdict. Ctrl-C stops it."""
    from modelcycle.registry import RegistryError
    from modelcycle.serving.local import ServingError

    if policy is not None and not policy.is_file():
        raise _fail(f"--policy: {policy} is not a file", EXIT_USAGE)
    runner = LocalLoop(spec_path=spec, workdir=workdir, registry_uri=registry, port=port, host=host,
                       policy_file=policy, say=lambda text: console.print(text, highlight=False, soft_wrap=True))

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Said, not inherited: a process started with SIGINT ignored (a background job) must stop
    # on Ctrl-C or SIGTERM all the same, and stop its servers.
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        runner.start()
        console.print(f"looking every {every:g} s; Ctrl-C stops")
        while True:
            time.sleep(every)
            print_step(runner.tick())
    except KeyboardInterrupt:
        console.print("stopping")
    except (RegistryError, ServingError, RuntimeError) as exc:
        raise _fail(str(exc), EXIT_FAILURE) from None
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # let the gateway flush its log
        runner.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- the demo ---------------------------------------------------------------------------------

DEMO_REPLAY_THREADS = 2
DEMO_POLICY = {"min_requests": 500, "min_agreement": 0.6, "max_latency_ratio": 5.0, "max_error_rate": 0.01}


def replay(url: str, frame, *, drop: list[str], threads: int = DEMO_REPLAY_THREADS) -> int:
    """POST every row of `frame` (without the `drop` columns) to the gateway's /predict, one
    record per request; return how many were answered 200."""
    from concurrent.futures import ThreadPoolExecutor

    records = json.loads(frame.drop(columns=drop).to_json(orient="records", date_format="iso"))

    def post(record: dict[str, Any]) -> bool:
        request = urllib.request.Request(f"{url}/predict", data=json.dumps({"records": [record]}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status == 200
        except (urllib.error.URLError, TimeoutError):
            return False

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(post, records))


def run_demo(*, example_dir: Path, workdir: Path, rows: int, port: int, drift: float) -> None:
    """The whole cycle on the fraud example, each step printed: train v1 and serve it; replay
    traffic like the training data (no drift), then drifted traffic while newer labelled
    transactions reach the data source; the loop detects the drift, retrains v2 on the
    newest data and serves it as shadow; mirrored traffic gives the verdict, and v2 is
    promoted. `drift` is the example generator's knob (0 to 1)."""
    import importlib.util

    import pandas as pd
    import yaml

    module_spec = importlib.util.spec_from_file_location("fraud_generate", example_dir / "generate.py")
    generator = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(generator)
    spec_dict = yaml.safe_load((example_dir / "modelcycle.yaml").read_text())
    target, id_column = spec_dict["data"]["target"], spec_dict["data"]["id_column"]
    # The demo's own project folder: the example's spec, and a data source the demo appends to.
    project = workdir / "demo"
    source = project / spec_dict["data"]["source"]
    source.parent.mkdir(parents=True, exist_ok=True)
    spec_path = project / "modelcycle.yaml"
    spec_path.write_text((example_dir / "modelcycle.yaml").read_text())
    history = generator.generate(rows)
    _write_parquet(history, source)

    def header(text: str) -> None:
        console.rule(f"[b]{text}[/]")

    header("1. train v1 and serve it")
    console.print(f"{len(history):,} labelled transactions from {history.ts.min():%Y-%m-%d} to "
                  f"{history.ts.max():%Y-%m-%d} in {source}")
    # The shadow's policy for a retrained model. It is meant to disagree with the stale model
    # where the world moved (measured: 0.73 to 0.87 agreement on the drifted traffic, by
    # sample size), so the agreement asked is far below the default's 0.95, which is made for
    # a model that should behave like production; it still catches a model that flags
    # everything. On one machine the shadow runs at a lower CPU priority next to the replay,
    # so its latency gets room too (measured 1.5x to 2.5x under load).
    policy_path = project / "promotion-policy.json"
    policy_path.write_text(json.dumps(DEMO_POLICY, indent=2))
    runner = LocalLoop(spec_path=spec_path, workdir=workdir, port=port, monitoring_ttl_s=0, policy_file=policy_path,
                       say=lambda text: console.print(text, highlight=False, soft_wrap=True))
    start = time.monotonic()
    try:
        runner.start()
        header("2. replay traffic like the training data")
        # The training data's own period: the model reads the month too, and a month it never
        # saw is a change of its inputs that it answers differently.
        calm = generator.generate(600, seed=21)
        console.print(f"{replay(runner.url, calm, drop=[target, id_column]):,} requests answered")
        print_step(runner.tick())

        header(f"3. the world drifts (generator drift {drift:g}); labelled transactions keep arriving")
        newer = generator.generate(max(rows // 3, 2000), seed=22, drift=drift, start="2026-07-01", days=60)
        _write_parquet(pd.concat([history, newer], ignore_index=True), source)
        console.print(f"{len(newer):,} newer labelled transactions appended to {source}")
        drifted = generator.generate(1200, seed=23, drift=drift, start="2026-09-01", days=7)
        console.print(f"{replay(runner.url, drifted, drop=[target, id_column]):,} drifted requests answered")
        step = runner.tick()
        print_step(step)
        if step.kind != "shadow":
            raise _fail(f"the demo expected a retrained version in shadow, and the loop said: {step.message}")

        header("4. the new version in shadow: mirrored traffic, then the verdict")
        console.print("promotion policy (" + str(policy_path) + "): "
                      + ", ".join(f"{k} {v:g}" for k, v in DEMO_POLICY.items()), highlight=False, soft_wrap=True)
        for round_ in range(4):
            more = generator.generate(700, seed=30 + round_, drift=drift, start="2026-09-08", days=7)
            console.print(f"{replay(runner.url, more, drop=[target, id_column]):,} requests answered, "
                          "each mirrored to the shadow")
            step = runner.tick()
            print_step(step)
            if step.kind != "hold":
                break
        header("5. the registry")
        for version in runner.registry.versions(runner.spec.name):
            aliases = f" ({', '.join(version.aliases)})" if version.aliases else ""
            console.print(f"{version.name}@{version.version}{aliases}: {version.status}, data "
                          f"{version.lineage.data_version[:12]}, parent {version.lineage.parent_version}, "
                          f"test roc_auc {version.metrics.get('test.roc_auc', float('nan')):.3f}", highlight=False)
        console.print(f"the whole cycle took {time.monotonic() - start:.0f} s")
        if step.kind != "promoted":
            raise _fail(f"the demo ended without a promotion: {step.message}")
    finally:
        runner.stop()


def _write_parquet(frame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
