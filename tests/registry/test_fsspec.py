"""The registry works at any fsspec URL; memory:// and file:// stand for the remote ones."""

import uuid

import fsspec
import pytest

from modelcycle.registry import ArtifactIntegrityError, Registry


@pytest.fixture
def memory_uri():
    uri = f"memory://registry-{uuid.uuid4().hex}"
    yield uri
    fs = fsspec.filesystem("memory")
    if fs.exists(uri):
        fs.rm(uri, recursive=True)


def test_memory_round_trip(memory_uri):
    registry = Registry(memory_uri)
    registry.register("fraud", {"weights": [1]}, lineage={"data_version": "d1"}, params={}, metrics={"f1": 0.5})
    second = registry.register("fraud", {"weights": [2]}, lineage={"parent_version": 1}, params={}, metrics={})
    registry.set_alias("fraud", "champion", 2)
    registry.annotate("fraud", 2, image="fraud:2")

    reader = Registry(memory_uri)  # another handle on the same store
    assert reader.models() == ["fraud"]
    assert reader.get("fraud", "champion") == second.model_copy(
        update={"aliases": ["champion"], "annotations": {"image": "fraud:2"}})
    assert reader.load("fraud", 1) == {"weights": [1]}
    assert second.artifact_uri == f"{memory_uri.replace('://', ':///')}/fraud/versions/2/model.joblib"
    assert fsspec.filesystem("memory").exists(second.artifact_uri)


def test_memory_refuses_a_tampered_artifact(memory_uri):
    registry = Registry(memory_uri)
    version = registry.register("fraud", {"weights": [1]}, lineage={}, params={}, metrics={})
    fsspec.filesystem("memory").pipe_file(version.artifact_uri, b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="sha256 mismatch"):
        registry.load("fraud")


def test_memory_skips_an_incomplete_version(memory_uri):
    registry = Registry(memory_uri)
    fsspec.filesystem("memory").pipe_file(f"{memory_uri}/fraud/versions/1/.claim", b"{}")
    assert registry.register("fraud", [1], lineage={}, params={}, metrics={}).version == 2
    assert [v.version for v in registry.versions("fraud")] == [2]


def test_a_file_url_and_a_plain_path_are_the_same_registry(tmp_path):
    by_url = Registry(f"file://{tmp_path}/reg")
    version = by_url.register("fraud", {"weights": [1]}, lineage={}, params={}, metrics={})
    assert (tmp_path / "reg" / "fraud" / "versions" / "1" / "version.json").is_file()
    assert Registry(tmp_path / "reg").get("fraud") == version
    assert Registry(str(tmp_path / "reg")).load("fraud") == {"weights": [1]}


def test_the_default_is_a_folder_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Registry().register("fraud", [1], lineage={}, params={}, metrics={})
    assert (tmp_path / ".modelcycle" / "registry" / "fraud" / "versions" / "1" / "model.joblib").is_file()


def test_storage_options_reach_the_filesystem(tmp_path):
    registry = Registry(f"file://{tmp_path}/reg", storage_options={"auto_mkdir": False})
    assert registry.fs.auto_mkdir is False
    registry.register("fraud", [1], lineage={}, params={}, metrics={})
    assert registry.load("fraud") == [1]
