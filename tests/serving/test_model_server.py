"""The model server over real HTTP: one command serves any registered version, read from the
registry at start-up, with a bento's contract; a version it cannot vouch for is never served."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelcycle import signing
from modelcycle.serving.local import ServerProcess, free_port, start_process, stop_process, wait_ready
from modelcycle.serving.model_server import REFUSED



def _close(answer: list[dict[str, float]], want: list[dict[str, float]]) -> bool:
    return len(answer) == len(want) and all(
        a.keys() == w.keys() and all(abs(a[k] - w[k]) < 1e-9 for k in a) for a, w in zip(answer, want))


def start_model_server(registry: str, model: str, *, workdir: Path, env: dict[str, str] | None = None,
                       role: str = "model-server") -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "modelcycle.serving.model_server", "--registry", registry, "--model", model,
               "--host", "127.0.0.1", "--port", str(port)]
    environ = {**os.environ, "BENTOML_HOME": str(workdir / role / "bentoml"), **(env or {})}
    return start_process(role, command, url=f"http://127.0.0.1:{port}", log=workdir / f"{role}.log", env=environ,
                         cwd=workdir)


def _refusal(server: ServerProcess) -> tuple[int | None, str]:
    """Wait for a server expected to refuse its version: its exit code and its log."""
    try:
        code = server.process.wait(timeout=120)
    finally:
        stop_process(server)
    return code, server.log_tail(5000)


@pytest.fixture(scope="module")
def model_server(served, tmp_path_factory) -> Iterator[ServerProcess]:
    """The champion (version 1) of the serving tests' registry."""
    server = start_model_server(str(served.registry.uri), "fraud@champion",
                                workdir=tmp_path_factory.mktemp("model-server"))
    try:
        wait_ready(server)
        yield server
    finally:
        stop_process(server)


def test_it_answers_as_the_registered_model_does(model_server, served, in_process):
    records = served.records[:20]
    with httpx.Client(base_url=model_server.url, timeout=30) as http:
        response = http.post("/predict", json={"records": records}, headers={"X-Request-ID": "ms-1"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["model_version"], body["request_id"]) == ("fraud", "1", "ms-1")
        assert response.headers["x-model-version"] == "1"
        predictions, probabilities = in_process(1, records)
        assert body["predictions"] == predictions
        assert _close(body["probabilities"], probabilities)

        batched = http.post("/predict_batch", json={"records": records[:3]})
        assert batched.status_code == 200, batched.text
        assert [row["prediction"] for row in batched.json()] == predictions[:3]

        bad = http.post("/predict", json={"records": [{**records[0], "channel": "fax"}]})
        assert bad.status_code == 422 and bad.json()["field"] == "channel"

        assert http.get("/livez").status_code == 200
        metrics = http.get("/metrics").text
        sha256 = served.registry.get("fraud", 1).sha256
        assert f'modelcycle_model_info{{model="fraud",sha256="{sha256}",version="1"}} 1.0' in metrics


def test_the_log_says_which_version_and_key(model_server, served):
    version = served.registry.get("fraud", 1)
    assert (f"serving fraud@1 (sha256 {version.sha256}, signed by key {version.signature.key_id})"
            in model_server.log_tail(20000))


def _tampered_copy(served, tmp_path: Path) -> Path:
    """The serving registry, copied, with version 2's artifact and sha256 replaced together."""
    root = tmp_path / "registry"
    shutil.copytree(served.registry.uri, root)
    folder = root / "fraud" / "versions" / "2"
    forged = (root / "fraud" / "versions" / "1" / "model.joblib").read_bytes() + b"\0"
    (folder / "model.joblib").write_bytes(forged)
    manifest = json.loads((folder / "version.json").read_text())
    manifest.update(sha256=hashlib.sha256(forged).hexdigest(), size_bytes=len(forged))
    (folder / "version.json").write_text(json.dumps(manifest))
    return root


def test_a_tampered_version_is_refused_and_the_server_never_listens(served, tmp_path):
    root = _tampered_copy(served, tmp_path)
    server = start_model_server(str(root), "fraud@2", workdir=tmp_path)
    code, log = _refusal(server)
    assert code == REFUSED, log
    assert f"refusing to serve fraud@2 from {root}" in log
    assert "model fraud version 2" in log and "does not match" in log
    assert "Application startup" not in log  # BentoML never started


def test_a_server_trusting_other_keys_refuses_and_names_both(served, tmp_path):
    other = tmp_path / "other-key"
    signing.new_key(other)
    public = signing.public_pem(signing.Keyring.from_environment({signing.KEY_ENV: str(other)}).signer().public_key())
    signed_by = served.registry.get("fraud", 1).signature.key_id
    server = start_model_server(str(served.registry.uri), "fraud@1", workdir=tmp_path, env={
        signing.KEY_ENV: str(other.with_name("absent")), signing.TRUSTED_ENV: public})
    code, log = _refusal(server)
    assert code == REFUSED, log
    assert "no such file" in log  # the signing key named but absent: an error, not a new key

    server = start_model_server(str(served.registry.uri), "fraud@1", workdir=tmp_path, role="public-only",
                                env={signing.TRUSTED_ENV: public, signing.KEY_ENV: "",  # no signing key at all
                                     "HOME": str(tmp_path / "no-home")})
    code, log = _refusal(server)
    assert code == REFUSED, log
    assert f"signed by key {signed_by}, which is not trusted here" in log
    assert f"expected one of {signing.key_id(signing.Keyring.from_environment({signing.KEY_ENV: str(other)}).signer().public_key())}" in log


@pytest.mark.slow
def test_it_serves_from_object_storage(served, bucket, s3_env, tmp_path, in_process):
    import fsspec

    registry_url = f"{bucket}/registry"
    fs, root = fsspec.core.url_to_fs(registry_url)
    fs.put(str(served.registry.uri) + "/", root, recursive=True)
    server = start_model_server(registry_url, "fraud@2", workdir=tmp_path)
    try:
        wait_ready(server)
        records = served.records[:5]
        answer = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=30).json()
        assert answer["model_version"] == "2"
        assert answer["predictions"] == in_process(2, records)[0]
    finally:
        stop_process(server)
