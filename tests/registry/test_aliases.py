"""Aliases name one version each; they move, and a rejected version is never champion."""

import json

import pytest

from modelcycle.registry import InvalidName, ModelNotFound, Registry, RegistryError

from .conftest import REJECTED


def test_an_alias_resolves_and_shows_on_its_version(registry, register):
    register(), register()
    registry.set_alias("fraud", "champion", 1)
    assert registry.get("fraud", "champion").version == 1
    assert registry.get("fraud", 1).aliases == ["champion"]
    assert registry.get("fraud", 2).aliases == []
    assert registry.load("fraud", "champion") == registry.load("fraud", 1)


def test_moving_an_alias_takes_it_off_the_old_version(root, registry, register):
    register(), register()
    registry.set_alias("fraud", "champion", 1)
    registry.set_alias("fraud", "challenger", 2)
    registry.set_alias("fraud", "champion", 2)
    assert [v.aliases for v in registry.versions("fraud")] == [[], ["challenger", "champion"]]
    assert json.loads((root / "fraud" / "aliases.json").read_text()) == {"champion": 2, "challenger": 2}
    assert Registry(root).get("fraud", "champion").version == 2  # a fresh reader sees it too


def test_setting_the_same_alias_again_writes_nothing(root, registry, register):
    register()
    registry.set_alias("fraud", "champion", 1)
    path = root / "fraud" / "aliases.json"
    before = path.stat()
    registry.set_alias("fraud", "champion", 1)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_rejected_version_cannot_become_champion(registry, register):
    register(), register(**REJECTED)
    registry.set_alias("fraud", "champion", 1)
    expected = r"version 2 was rejected \(failed gates: test\.roc_auc\).*cannot be champion"
    with pytest.raises(RegistryError, match=expected):
        registry.set_alias("fraud", "champion", 2)
    assert registry.get("fraud", "champion").version == 1
    registry.set_alias("fraud", "challenger", 2)  # other aliases may point at it, e.g. to shadow it
    assert registry.get("fraud", "challenger").status == "rejected"


def test_an_unknown_alias_lists_the_aliases_that_exist(registry, register):
    register(), register()
    with pytest.raises(ModelNotFound, match=r"no alias 'champion'; aliases: \(none\)"):
        registry.get("fraud", "champion")
    registry.set_alias("fraud", "challenger", 2)
    registry.set_alias("fraud", "champion", 1)
    with pytest.raises(ModelNotFound, match="no alias 'champoin'; aliases: challenger -> 2, champion -> 1"):
        registry.get("fraud", "champoin")


def test_removing_an_alias(registry, register):
    register()
    registry.set_alias("fraud", "champion", 1)
    registry.remove_alias("fraud", "champion")
    with pytest.raises(ModelNotFound):
        registry.get("fraud", "champion")
    registry.remove_alias("fraud", "champion")  # already gone: nothing to do
    assert registry.get("fraud", 1).aliases == []


def test_an_alias_needs_an_existing_model_and_version(registry, register):
    with pytest.raises(ModelNotFound, match="model 'fraud' not found"):
        registry.set_alias("fraud", "champion", 1)
    with pytest.raises(ModelNotFound, match="model 'fraud' not found"):
        registry.remove_alias("fraud", "champion")
    register()
    with pytest.raises(ModelNotFound, match="no version 5; versions: 1"):
        registry.set_alias("fraud", "champion", 5)


@pytest.mark.parametrize("alias", ["latest", "3", "Champion", "champion_v2", "-x", ""])
def test_a_bad_alias_is_refused_naming_the_rule(registry, register, alias):
    register()
    with pytest.raises(InvalidName, match=f"alias {alias!r} is invalid: it must be .*starting with a letter"):
        registry.set_alias("fraud", alias, 1)


def test_annotations_are_added_and_kept(root, registry, register):
    register()
    registry.set_alias("fraud", "champion", 1)
    annotated = registry.annotate("fraud", 1, bento_tag="fraud:abc123")
    registry.annotate("fraud", 1, image="registry.local/fraud:abc123")
    stored = Registry(root).get("fraud", 1)
    assert annotated.annotations == {"bento_tag": "fraud:abc123"}
    assert stored.annotations == {"bento_tag": "fraud:abc123", "image": "registry.local/fraud:abc123"}
    assert stored.model_dump(exclude={"annotations"}) == annotated.model_dump(exclude={"annotations"})
    manifest = json.loads((root / "fraud" / "versions" / "1" / "version.json").read_text())
    assert "aliases" not in manifest
    with pytest.raises(RegistryError, match="cannot annotate"):
        registry.annotate("fraud", 1, image=3)
