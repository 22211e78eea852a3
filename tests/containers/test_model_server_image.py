"""The model server in the modelcycle image, as the operator would run it: non-root, read-only
root filesystem with only /tmp writable, the registry on S3, only the public key given; a
retrained version is served without building an image, and a tampered one never is.

The models are the serving tests' (`tests/serving/conftest.py`)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import fsspec
import pytest

from modelcycle import signing
from modelcycle.cluster.images import PYTHON_IMAGE
from modelcycle.serving.model_server import REFUSED

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("serving_fixtures", ROOT / "tests" / "serving" / "conftest.py")
serving_fixtures = sys.modules.setdefault("serving_fixtures", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(serving_fixtures)
served = serving_fixtures.served
in_process = serving_fixtures.in_process

from test_bento_image import free_port, http, wait_http  # noqa: E402


def _run(container_engine, object_store, served, *, name: str, registry: str, model: str, port: int) -> None:
    trusted = signing.public_pem(served.registry.keyring.signer().public_key())
    env = {**object_store.env, signing.TRUSTED_ENV: trusted, "BENTOML_HOME": "/tmp/bentoml"}
    container_engine.run("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--network=host",
                         "--cap-drop=all", "--security-opt=no-new-privileges",
                         *[arg for key, value in env.items() for arg in ("-e", f"{key}={value}")],
                         PYTHON_IMAGE, "python", "-m", "modelcycle.serving.model_server", "--registry", registry,
                         "--model", model, "--host", "127.0.0.1", "--port", str(port))


@pytest.mark.slow
def test_model_server_image_serves_a_version_from_s3_and_refuses_a_tampered_one(
        container_engine, object_store, bucket, served, in_process):
    fs, root = fsspec.core.url_to_fs(f"{bucket}/registry")
    fs.put(str(served.registry.uri) + "/", root, recursive=True)

    port = free_port()
    name = f"model-server-under-test-{port}"
    _run(container_engine, object_store, served, name=name, registry=f"{bucket}/registry", model="fraud@2", port=port)
    try:
        config = container_engine.inspect(PYTHON_IMAGE)
        assert config["Config"]["User"] not in ("", "0", "root")
        running = lambda: container_engine.run("inspect", "--format", "{{.State.Running}}", name,  # noqa: E731
                                               check=False).stdout.strip() == "true"
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=180, alive=running)
        records = served.records[:5]
        status, body = http("POST", f"http://127.0.0.1:{port}/predict", {"records": records})
        assert status == 200, body
        answer = json.loads(body)
        assert answer["model_version"] == "2"
        assert answer["predictions"] == in_process(2, records)[0]
    finally:
        logs = container_engine.run("logs", name, check=False)
        container_engine.run("rm", "-f", "-t", "5", name, check=False)
        print((logs.stdout + logs.stderr)[-3000:])

    forged = fs.cat_file(f"{root}/fraud/versions/1/model.joblib")
    fs.pipe_file(f"{root}/fraud/versions/2/model.joblib", forged)
    manifest = json.loads(fs.cat_file(f"{root}/fraud/versions/2/version.json"))
    manifest.update(sha256=hashlib.sha256(forged).hexdigest(), size_bytes=len(forged))
    fs.pipe_file(f"{root}/fraud/versions/2/version.json", json.dumps(manifest).encode())

    name = f"model-server-tampered-{port}"
    _run(container_engine, object_store, served, name=name, registry=f"{bucket}/registry", model="fraud@2", port=port)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and container_engine.run(
                "inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip() == "true":
            time.sleep(0.5)
        code = container_engine.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        logs = container_engine.run("logs", name, check=False)
        output = logs.stdout + logs.stderr
        assert code == str(REFUSED), output
        assert "refusing to serve fraud@2" in output and "does not match" in output, output
    finally:
        container_engine.run("rm", "-f", "-t", "5", name, check=False)
