"""The closed loop on this machine: `make demo` (the console script, as a reader runs it) goes
from v1 through drift and a retraining to a promoted v2; `modelcycle loop` never trains on
data that failed validation, and its guard rails hold production as it is."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fraud_example import load_generator, small_spec_dict

from modelcycle.cli.loop import LocalLoop, replay
from modelcycle.monitoring.retraining import RetrainLedger
from modelcycle.registry import Registry
from modelcycle.serving.local import free_port

CONSOLE_SCRIPT = Path(sys.executable).parent / "modelcycle"

pytestmark = pytest.mark.slow


def _reader_env() -> dict[str, str]:
    """A reader's shell after `make`: the system's PATH, without the uv make fetched, and no
    variable that uv or make set."""
    path = "/usr/bin:/bin"
    assert shutil.which("uv", path=path) is None
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("UV_", "VIRTUAL_ENV", "PYTHON", "MAKE", "MFLAGS"))}
    return {**env, "PATH": path}


def test_the_demo_prints_a_full_cycle_ending_in_a_promoted_v2(tmp_path: Path) -> None:
    done = subprocess.run([str(CONSOLE_SCRIPT), "demo", "--rows", "8000", "--port", str(free_port())],
                          cwd=tmp_path, env=_reader_env(), capture_output=True, text=True, timeout=1500)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-3000:]
    steps = ["1. train v1 and serve it", "registered fraud@1", "2. replay traffic", "watching: verdict ok",
             "3. the world drifts", "retraining on the newest data", "registered fraud@2",
             "shadow: fraud@2 registered as challenger", "4. the new version in shadow",
             "promoted: shadow fraud@2 promoted"]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), (dict(zip(steps, positions)), out[-4000:])
    registry = Registry(tmp_path / ".modelcycle" / "registry")
    champion = registry.get("fraud", "champion")
    assert champion.version == 2 and champion.lineage.parent_version == 1
    assert champion.annotations["promoted_from"] == "1"
    assert champion.lineage.data_version != registry.get("fraud", 1).lineage.data_version  # the newest data
    attempt, = RetrainLedger(tmp_path / ".modelcycle" / "loop" / "fraud.json").attempts()
    assert (attempt.trigger, attempt.outcome, attempt.version) == ("drift", "promoted", 2)


def test_the_loop_never_trains_on_invalid_data_and_keeps_its_cooldown(tmp_path: Path) -> None:
    generator = load_generator()
    spec = small_spec_dict()
    spec["goal"]["primary"]["min"] = 0.6
    spec["goal"]["secondary"] = []
    spec["monitoring"] = {"retrain": {"min_rows": 200, "cooldown": "1h"}}
    data = tmp_path / "transactions.parquet"
    generator.generate(4000, seed=5).to_parquet(data, index=False)
    spec["data"]["source"] = str(data)
    spec_path = tmp_path / "modelcycle.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    said: list[str] = []
    loop = LocalLoop(spec_path=spec_path, workdir=tmp_path / ".modelcycle", port=free_port(), monitoring_ttl_s=0,
                     say=said.append)
    try:
        loop.start()
        assert loop.serving.production_version.version == 1
        replay(loop.url, generator.generate(300, seed=6, drift=0.9), drop=["is_fraud", "transaction_id"])
        # The newest data arrives broken: negative amounts, which the spec forbids.
        newer = generator.generate(500, seed=7, drift=0.9, start="2026-07-01", days=30)
        newer.loc[newer.index[:25], "amount"] = -1.0
        pd.concat([pd.read_parquet(data), newer], ignore_index=True).to_parquet(data, index=False)

        step = loop.tick()
        assert step.kind == "invalid_data", (step, said)
        assert "failed validation, so nothing was trained on it" in step.message
        assert "production stays fraud@1" in step.message
        assert any("amount" in line for line in step.details), step.details
        registry = Registry(tmp_path / ".modelcycle" / "registry")
        assert [v.version for v in registry.versions("fraud")] == [1]
        assert registry.get("fraud", "champion").version == 1 and loop.serving.production_version.version == 1
        attempt, = loop.ledger.attempts()
        assert attempt.outcome == "invalid_data" and attempt.finished_at is not None

        # Still drifted, but inside the cooldown: nothing runs, and the step says when it may.
        step = loop.tick()
        assert step.kind == "held_back", step
        assert "cooldown" in step.message and "next start allowed at" in step.message
        assert len(loop.ledger.attempts()) == 1
        assert json.loads((tmp_path / ".modelcycle" / "loop" / "fraud.json").read_text())["attempts"][0]["outcome"] \
            == "invalid_data"
    finally:
        loop.stop()

    # The verb as a reader runs it: a new process keeps the rails (the ledger is on disk), and
    # Ctrl-C stops it cleanly.
    port = free_port()
    out = tmp_path / "loop.out"
    with open(out, "wb") as log:
        process = subprocess.Popen([str(CONSOLE_SCRIPT), "loop", str(spec_path), "--every", "1", "--port", str(port)],
                                   cwd=tmp_path, env=_reader_env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "held_back" not in out.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        text = out.read_text()
        assert f"serving fraud@1 (champion) at http://127.0.0.1:{port}" in text, text
        assert "held_back: drift found, not retraining: cooldown" in " ".join(text.split()), text
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"modelcycle loop did not stop on SIGINT: {out.read_text()[-3000:]}")
        assert code == 0, out.read_text()
        assert "stopping" in out.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert len(RetrainLedger(tmp_path / ".modelcycle" / "loop" / "fraud.json").attempts()) == 1
