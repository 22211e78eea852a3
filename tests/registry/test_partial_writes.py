"""A version that was never completed is invisible, and its number is not reused."""

import pytest

from modelcycle.registry import ModelNotFound


def test_a_version_folder_without_manifest_is_ignored(root, registry, register):
    register()
    crashed = root / "fraud" / "versions" / "2"
    crashed.mkdir()
    (crashed / "model.joblib").write_bytes(b"half an artifa")  # the crash came before the manifest

    assert [v.version for v in registry.versions("fraud")] == [1]
    assert registry.get("fraud").version == 1
    with pytest.raises(ModelNotFound, match="no version 2; versions: 1"):
        registry.get("fraud", 2)

    after = register(model={"weights": [9]})
    assert after.version == 3
    assert [v.version for v in registry.versions("fraud")] == [1, 3]
    assert registry.load("fraud") == {"weights": [9]}


def test_a_model_with_only_an_incomplete_version_does_not_exist(root, registry, register):
    (root / "churn" / "versions" / "1").mkdir(parents=True)
    (root / "churn" / "versions" / "1" / ".claim").write_text("{}")
    assert registry.models() == []
    with pytest.raises(ModelNotFound, match=r"model 'churn' not found"):
        registry.get("churn")
    assert register("churn").version == 2
    assert registry.models() == ["churn"]


def test_no_temporary_files_are_left_behind(root, registry, register):
    register()
    registry.set_alias("fraud", "champion", 1)
    registry.annotate("fraud", 1, image="x")
    names = sorted(p.name for p in (root / "fraud").rglob("*") if p.is_file())
    assert names == [".claim", ".lock", "aliases.json", "model.joblib", "version.json"]
