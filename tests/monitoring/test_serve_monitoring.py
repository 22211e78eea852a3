"""`modelcycle serve` hands the gateway production's reference profile from the registry,
so a model served locally exports its score histogram and drift metrics with no flag."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from modelcycle.serving.local import free_port


def test_serve_exports_the_score_histogram_and_drift_metrics(monitored, generate_fraud, tmp_path):
    port = free_port()
    log = tmp_path / "serve.out"
    command = [sys.executable, "-m", "modelcycle.cli", "serve", "fraud", "--port", str(port),
               "--workdir", str(monitored.workdir), "--registry", monitored.registry.uri]
    records = json.loads(generate_fraud(30, seed=3).drop(columns=["is_fraud"]).to_json(orient="records",
                                                                                        date_format="iso"))
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for record in records:
                assert http.post("/predict", json=record).status_code == 200
            metrics = http.get("/metrics").text
        count = next(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("modelcycle_prediction_score_count"))
        assert count == len(records)
        assert "modelcycle_dataset_drift" in metrics
        assert "reference-profile" in " ".join(open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
                                             for pid in _gateway_pids(port))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _gateway_pids(port: int) -> list[str]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline").read()
            except OSError:
                continue
            if "modelcycle.serving.gateway" in cmdline and f"\0{port}" in cmdline:
                pids.append(entry)
    return pids
