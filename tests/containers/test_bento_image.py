"""A bento's image (`modelcycle package --image`): non-root, labelled with the model it
serves, only the serving extra's packages (no kfp, no kopf), serving under the operator's
security context (uid 1034, read-only root filesystem, only /tmp writable), sharing its
dependency layers with the other versions' images, and saved as an OCI archive.

The models are the serving tests' (`tests/serving/conftest.py`): version 1 a logistic
regression, version 2 a random forest, trained on the example's fraud data.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelcycle import __version__, signing
from modelcycle.cluster.images import BENTO_UID, BuiltImage, build_bento_image
from modelcycle.serving.packaging import PackagedBento, package

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("serving_fixtures", ROOT / "tests" / "serving" / "conftest.py")
serving_fixtures = sys.modules.setdefault("serving_fixtures", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(serving_fixtures)
served = serving_fixtures.served
in_process = serving_fixtures.in_process

DISTS = "import importlib.metadata as m, json; print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))"


@dataclass
class BentoImage:
    bento: PackagedBento
    built: BuiltImage


@pytest.fixture(scope="session")
def bento_images(container_engine, served) -> Iterator[dict[int, BentoImage]]:
    """The images of versions 1 and 2, built (or found: the tag names the model and the code),
    and the ones built here removed at the end: the session's models are new, and so are
    their images' tags, so each run would leave two more gigabyte images behind. One found
    is left alone: another test worker may be using it."""
    images, built_here = {}, []
    try:
        for version in (1, 2):
            bento = package(served.registry, f"fraud@{version}", workdir=served.workdir)
            if not container_engine.exists(bento.image):
                built_here.append(bento.image)
            built = build_bento_image(bento, eng=container_engine)
            print(f"{built.tag}: {built.size_mb:.0f} MB, {built.seconds:.1f} s")
            images[version] = BentoImage(bento=bento, built=built)
        yield images
    finally:
        for tag in built_here:
            container_engine.remove(tag)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: object | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_http(url: str, *, timeout: float = 90, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http("GET", url, timeout=2)[0] == 200:
            return
        if not alive():
            break
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer 200 within {timeout:g} s")


def test_bento_image_is_labelled_non_root_and_has_no_kfp_nor_kopf(container_engine, served, bento_images):
    for version, image in bento_images.items():
        config = container_engine.inspect(image.built.tag)
        labels = config["Config"]["Labels"]
        registered = served.registry.get("fraud", version)
        assert labels["io.modelcycle.model"] == "fraud"
        assert labels["io.modelcycle.model-version"] == str(version)
        assert labels["io.modelcycle.artifact-sha256"] == registered.sha256
        assert labels["io.modelcycle.bento"] == image.bento.tag
        assert labels["org.opencontainers.image.version"] == __version__
        assert labels["org.opencontainers.image.source"].startswith("https://")
        assert config["Config"]["User"] == str(BENTO_UID)
        assert registered.annotations["image"] == image.built.tag
    dists = set(json.loads(container_engine.run(
        "run", "--rm", "--network=none", "--entrypoint", "python", bento_images[1].built.tag, "-c", DISTS,
        timeout=120).stdout))
    assert {"bentoml", "scikit-learn", "pandas", "modelcycle"} <= dists
    assert not {"kfp", "kopf", "kubernetes", "pytest"} & dists, "a bento image installs only the serving extra"


def test_versions_share_the_dependency_layers(container_engine, bento_images):
    """Production and shadow differ only in the model: all but the last layers are the same."""
    layers = {v: container_engine.inspect(image.built.tag)["RootFS"]["Layers"] for v, image in bento_images.items()}
    shared = 0
    for one, two in zip(layers[1], layers[2]):
        if one != two:
            break
        shared += 1
    assert shared >= len(layers[2]) - 3, f"only {shared} of {len(layers[2])} layers shared"
    assert layers[1] != layers[2], "the images differ in their bento (the model)"


def test_bento_image_serves_read_only_as_its_user(container_engine, served, bento_images, in_process):
    tag = bento_images[1].built.tag
    port = free_port()
    name = f"bento-under-test-{port}"
    trusted = signing.public_pem(served.registry.keyring.signer().public_key())  # a server holds only the public key
    container_engine.run("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--user", str(BENTO_UID),
                         "--cap-drop=all", "--security-opt=no-new-privileges", "-p", f"127.0.0.1:{port}:3000",
                         "-e", f"{signing.TRUSTED_ENV}={trusted}", tag)
    try:
        url = f"http://127.0.0.1:{port}"
        running = lambda: container_engine.run("inspect", "--format", "{{.State.Running}}", name,  # noqa: E731
                                               check=False).stdout.strip() == "true"
        wait_http(f"{url}/readyz", alive=running)
        assert http("GET", f"{url}/livez")[0] == 200
        records = served.records[:5]
        status, body = http("POST", f"{url}/predict", {"records": records})
        assert status == 200, body
        answer = json.loads(body)
        predictions, probabilities = in_process(1, records)
        assert answer["model_version"] == "1"
        assert answer["predictions"] == predictions
        assert answer["probabilities"] == [pytest.approx(row) for row in probabilities]
        status, body = http("POST", f"{url}/predict", {"records": [{**records[0], "channel": "fax"}]})
        assert status == 422 and json.loads(body)["field"] == "channel"
    finally:
        logs = container_engine.run("logs", name, check=False)
        container_engine.run("rm", "-f", "-t", "5", name, check=False)
        print((logs.stdout + logs.stderr)[-3000:])


def test_bento_image_without_a_trusted_key_never_serves(container_engine, bento_images):
    """The signature is checked with keys from outside the image: with none, nothing is unpickled."""
    port = free_port()
    name = f"bento-without-key-{port}"
    container_engine.run("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--user", str(BENTO_UID),
                         "-p", f"127.0.0.1:{port}:3000", bento_images[1].built.tag)
    try:
        deadline, output = time.monotonic() + 120, ""
        while time.monotonic() < deadline and "refusing to unpickle it" not in output:
            time.sleep(1)
            logs = container_engine.run("logs", name, check=False)
            output = logs.stdout + logs.stderr
        assert "unsigned" not in output and "refusing to unpickle it" in output, output[-3000:]
        assert "expected a signature by a trusted key" in output or "which is not trusted here" in output
        assert http("GET", f"http://127.0.0.1:{port}/readyz")[0] != 200
    finally:
        container_engine.run("rm", "-f", "-t", "5", name, check=False)


def test_package_image_command_and_oci_archive(container_engine, served, bento_images, tmp_path):
    """`modelcycle package fraud@1 --image --save DIR`: the image recorded on the version, also
    written as an OCI archive for an air-gapped cluster."""
    proc = subprocess.run(
        [sys.executable, "-m", "modelcycle.cli", "package", "fraud@1", "--workdir", str(served.workdir), "--image",
         "--save", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tag = served.registry.get("fraud", 1).annotations["image"]
    assert f"image:      {tag} (" in proc.stdout
    assert container_engine.exists(tag)
    archive = tmp_path / (tag.replace("/", "_").replace(":", "_") + ".oci.tar")
    assert archive.is_file()
    if container_engine.name == "podman":
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            assert {"oci-layout", "index.json"} <= names
            index = json.load(tar.extractfile("index.json"))
        assert index["manifests"][0]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
