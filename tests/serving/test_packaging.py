"""`modelcycle package`: a bento per model version, with its Dockerfile, recorded on the version;
idempotent; and a tampered artifact is refused, in the registry and inside the bento."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelcycle.artifacts import ArtifactIntegrityError
from modelcycle.registry import Registry, SignatureError
from modelcycle.cli.serving import commands as serving_app
from modelcycle.serving.local import ServingError, serve_bento, stop_process, wait_ready
from modelcycle.serving.packaging import build_wheel, package


def test_the_bento_holds_the_model_a_wheel_and_its_dockerfile(served, bento):
    home = served.workdir.resolve() / "bentoml"
    path = Path(bento.path)
    assert path.is_relative_to(home / "bentos")  # BENTOML_HOME is inside the workdir
    dockerfile = Path(bento.dockerfile)
    assert dockerfile == path / "env" / "docker" / "Dockerfile"
    assert "install.sh" in dockerfile.read_text()
    assert [w.name for w in (path / "env" / "python" / "wheels").iterdir()] == ["modelcycle-0.1.0-py3-none-any.whl"]
    version = served.registry.get("fraud", 1)
    manifest = yaml.safe_load((path / "bento.yaml").read_text())
    assert manifest["labels"]["modelcycle.sha256"] == version.sha256
    assert [m["tag"] for m in manifest["models"]] == [bento.model_tag]
    assert f"model_sha256 = {version.sha256!r}" in (path / "src" / "service.py").read_text()
    name, model_version = bento.model_tag.split(":")
    stored = home / "models" / name / model_version / "model.joblib"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == version.sha256
    assert version.annotations == {"bento": bento.tag, "image": bento.image}
    assert bento.tag.startswith("fraud:1-")


def test_packaging_again_changes_nothing(served, bento):
    again = package(served.registry, "fraud@champion", workdir=served.workdir)
    assert (again.tag, again.built) == (bento.tag, False)
    assert served.registry.get("fraud", 1).annotations["bento"] == bento.tag


def test_a_given_wheel_makes_a_bento_of_its_own_once(tmp_path, served, bento):
    """With ``--wheel`` the bento holds that wheel and is known by its sha256: packaging with
    it again finds the bento without building anything."""
    shutil.copytree(served.registry.uri, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    wheel = build_wheel(tmp_path / "dist")
    first = package(registry, "fraud@1", workdir=tmp_path, wheel=wheel)
    assert first.built and first.tag != bento.tag and first.tag.startswith("fraud:1-")
    (inside,) = (Path(first.path) / "env" / "python" / "wheels").iterdir()
    assert inside.read_bytes() == wheel.read_bytes()
    again = package(registry, "fraud@1", workdir=tmp_path, wheel=wheel)
    assert (again.tag, again.built) == (first.tag, False)
    assert registry.get("fraud", 1).annotations["bento"] == first.tag


def test_the_wheel_is_built_the_same_each_time(tmp_path):
    """The bento of a checkout is known by a digest of its sources, which holds only because
    hatchling's wheels are reproducible: the same code gives the same bytes."""
    one, two = build_wheel(tmp_path / "one"), build_wheel(tmp_path / "two")
    assert one.name == "modelcycle-0.1.0-py3-none-any.whl" and one.read_bytes() == two.read_bytes()


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_registry_artifact_is_not_packaged(tmp_path, served):
    shutil.copytree(served.registry.uri, tmp_path / "registry")
    _tamper(tmp_path / "registry" / "fraud" / "versions" / "2" / "model.joblib")
    with pytest.raises(ArtifactIntegrityError, match="sha256 mismatch"):
        package(Registry(tmp_path / "registry"), "fraud@2", workdir=tmp_path)
    assert not (tmp_path / "bentoml").exists()


def test_a_tampered_bento_model_is_refused_at_load(tmp_path, served, bento):
    """The bento's entry module pins the sha256: changed bytes in the model store never get
    unpickled, and the server never becomes ready."""
    shutil.copytree(served.workdir / "bentoml", tmp_path / "bentoml", ignore=shutil.ignore_patterns("tmp"))
    name, model_version = bento.model_tag.split(":")
    _tamper(tmp_path / "bentoml" / "models" / name / model_version / "model.joblib")
    server = serve_bento(bento, role="tampered", workdir=tmp_path)
    try:
        with pytest.raises(ServingError, match="sha256 mismatch") as failure:
            wait_ready(server, timeout_s=90)
        assert "refusing to unpickle it" in str(failure.value)
    finally:
        stop_process(server)


def test_an_artifact_replaced_with_its_sha256_is_not_packaged(tmp_path, served):
    """Whoever can write the registry can change the sha256 too, but not the signature."""
    shutil.copytree(served.registry.uri, tmp_path / "registry")
    folder = tmp_path / "registry" / "fraud" / "versions" / "2"
    forged = (tmp_path / "registry" / "fraud" / "versions" / "1" / "model.joblib").read_bytes()
    (folder / "model.joblib").write_bytes(forged)
    manifest = json.loads((folder / "version.json").read_text())
    manifest["sha256"] = hashlib.sha256(forged).hexdigest()
    (folder / "version.json").write_text(json.dumps(manifest))
    with pytest.raises(SignatureError, match="model fraud version 2: .* does not match"):
        package(Registry(tmp_path / "registry"), "fraud@2", workdir=tmp_path)
    assert not (tmp_path / "bentoml").exists()


def test_a_bento_whose_model_and_pinned_sha256_were_replaced_never_serves(tmp_path, served, bento):
    """The bento's model swapped for another model, and its entry module's sha256 changed to
    match: the signature, checked with a key from outside the bento, refuses it."""
    shutil.copytree(served.workdir / "bentoml", tmp_path / "bentoml", ignore=shutil.ignore_patterns("tmp"))
    name, model_version = bento.model_tag.split(":")
    other = served.registry.verified_bytes(served.registry.get("fraud", 2))
    (tmp_path / "bentoml" / "models" / name / model_version / "model.joblib").write_bytes(other)
    entry = tmp_path / "bentoml" / "bentos" / Path(bento.path).relative_to(served.workdir / "bentoml" / "bentos")
    entry = entry / "src" / "service.py"
    version = served.registry.get("fraud", 1)
    entry.write_text(entry.read_text().replace(version.sha256, hashlib.sha256(other).hexdigest()))
    server = serve_bento(bento, role="forged", workdir=tmp_path)
    try:
        with pytest.raises(ServingError, match="does not match") as failure:
            wait_ready(server, timeout_s=90)
        assert "model fraud version 1" in str(failure.value) and "refusing to unpickle it" in str(failure.value)
    finally:
        stop_process(server)


def test_the_bento_carries_the_versions_signature(served, bento):
    version = served.registry.get("fraud", 1)
    service = (Path(bento.path) / "src" / "service.py").read_text()
    assert f"model_signature = {version.signature.model_dump()!r}" in service
    assert f"model_status = {version.status!r}" in service


def test_the_package_command(served, bento):
    runner = CliRunner()
    args = ["--workdir", str(served.workdir), "--registry", served.registry.uri]
    no_version = runner.invoke(serving_app, ["package", "fraud", *args])
    assert no_version.exit_code == 2 and "fraud@champion" in no_version.output
    unknown = runner.invoke(serving_app, ["package", "nope@1", *args])
    assert unknown.exit_code == 2 and "model 'nope' not found" in unknown.output
    done = runner.invoke(serving_app, ["package", "fraud@1", *args])
    assert done.exit_code == 0, done.output
    assert f"already built: bento {bento.tag}" in done.output and "Dockerfile" in done.output
