"""`modelcycle serve`: production and a shadow from their bentos, behind the gateway, as local
processes over real HTTP; a clean stop on SIGTERM leaves every mirrored request in the log."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from modelcycle.monitoring.predictions import read_prediction_log
from modelcycle.cli.serving import commands as serving_app
from modelcycle.serving.local import free_port

CLI = "from modelcycle.cli.serving import commands; commands()"
"""The serving commands as a program of their own, the typer app `modelcycle.cli` mounts."""


def _wait_ready(url: str, process: subprocess.Popen, log, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"serve was not ready in {timeout_s} s:\n{log.read_text()[-3000:]}")


def _niceness_of_listeners(port: int) -> set[int]:
    """The nice values of every process holding the socket that listens on 127.0.0.1:`port`
    (BentoML's arbiter binds it and its workers inherit it), read from /proc."""
    inodes = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
    nice = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
            if any(f"socket:[{inode}]" in held for inode in inodes):
                nice.add(int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16]))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return nice


def _predict_counts(url: str) -> dict[str, float]:
    """A model server's count of /predict answers by status (those it gave), from its /metrics."""
    counts = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.name == "bentoml_service_request":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["endpoint"] == "/predict" and sample.value:
                    counts[sample.labels["http_response_code"]] = sample.value
    return counts


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_serve_with_a_shadow_then_stop(tmp_path, served, bento, in_process):
    port = free_port()
    log = tmp_path / "serve.out"
    command = [sys.executable, "-c", CLI, "serve", "fraud", "--shadow", "2", "--mirror-percent", "100",
               "--port", str(port), "--workdir", str(served.workdir), "--registry", served.registry.uri]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", process, log)
        servers = dict(re.findall(r"^(production|shadow): \S+ at http://127\.0\.0\.1:(\d+)$", log.read_text(), re.M))
        assert set(servers) == {"production", "shadow"}, log.read_text()
        # The shadow yields the CPU to production.
        assert _niceness_of_listeners(int(servers["production"])) == {0}
        assert _niceness_of_listeners(int(servers["shadow"])) == {10}
        ids = [f"serve-{i}" for i in range(12)]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for i, request_id in enumerate(ids):
                records = served.records[i:i + 1 + i % 3]
                response = http.post("/predict", json={"records": records}, headers={"X-Request-ID": request_id})
                assert response.status_code == 200, response.text
                body = response.json()
                assert (body["model_version"], body["request_id"]) == ("1", request_id)
                assert body["predictions"] == in_process(1, records)[0]
            bad = http.post("/predict", json={**served.records[0], "channel": "fax"})
            assert bad.status_code == 422 and bad.json()["field"] == "channel"
        # Each server's metrics are its own: production's count one request sent to it alone,
        # and never the shadow's mirrored ones.
        production_url = f"http://127.0.0.1:{servers['production']}"
        assert httpx.post(f"{production_url}/predict", json=served.records[0], timeout=30).status_code == 200
        assert _predict_counts(production_url) == {"200": len(ids) + 1, "422": 1}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not any(_listening(int(p)) for p in (port, *servers.values())), "a server outlived serve"

    # By default each pairing of production and shadow gets a log of its own.
    log_dir = served.workdir / "predictions" / "fraud" / "v1-shadow-v2"
    assert f"prediction log {log_dir}" in log.read_text()
    entries = read_prediction_log(log_dir)
    logged = entries[entries.client_request_id.isin(ids)]
    assert set(logged.client_request_id) == set(ids)
    assert logged.mirrored.all()
    assert (logged.production_version == "1").all() and (logged.shadow_version == "2").all()
    for request_id, rows in logged.groupby("client_request_id"):
        i = ids.index(request_id)
        records = served.records[i:i + 1 + i % 3]
        assert rows.sort_values("row").production_prediction.tolist() == in_process(1, records)[0]
        assert rows.sort_values("row").shadow_prediction.tolist() == in_process(2, records)[0]


def test_serve_refuses_what_it_cannot_serve(served):
    args = ["--workdir", str(served.workdir), "--registry", served.registry.uri]
    unknown = CliRunner().invoke(serving_app, ["serve", "nope", *args])
    assert unknown.exit_code == 2 and "model 'nope' not found" in unknown.output
    same = CliRunner().invoke(serving_app, ["serve", "fraud", "--shadow", "champion", *args])
    assert same.exit_code == 2 and "which is production already" in same.output
    no_alias = CliRunner().invoke(serving_app, ["serve", "fraud@challenger", *args])
    assert no_alias.exit_code == 2 and "no alias 'challenger'" in no_alias.output
