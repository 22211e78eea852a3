from pathlib import Path

import pytest

from modelcycle import signing
from modelcycle.registry import Registry

LINEAGE = {"data_version": "d41d8cd98f00", "schema_hash": "abc123", "spec_hash": "f00d", "code_version": "0.1.0"}


@pytest.fixture(scope="session")
def signing_key_path(tmp_path_factory) -> Path:
    """The tests' own signing key, so that they never create or use the user's."""
    path = tmp_path_factory.mktemp("keys") / "signing-key"
    signing.new_key(path)
    return path


@pytest.fixture(autouse=True)
def signing_key(monkeypatch, signing_key_path) -> Path:
    monkeypatch.setenv(signing.KEY_ENV, str(signing_key_path))
    monkeypatch.delenv(signing.TRUSTED_ENV, raising=False)
    return signing_key_path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def registry(root: Path) -> Registry:
    return Registry(root)


@pytest.fixture
def register(registry: Registry):
    """Register a small model with plausible lineage; keyword arguments override the defaults."""

    def register(name: str = "fraud", model: object = None, **overrides):
        arguments = {"lineage": LINEAGE, "params": {"C": 1.0}, "metrics": {"roc_auc": 0.91}} | overrides
        return registry.register(name, {"weights": [0.1, 0.2]} if model is None else model, **arguments)

    return register


REJECTED = {"status": "rejected", "gates": [
    {"name": "test.roc_auc", "metric": "roc_auc", "op": ">=", "threshold": 0.8, "value": 0.62, "passed": False}]}
