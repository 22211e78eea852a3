from pathlib import Path

import pytest

from modelcycle.registry import Registry

LINEAGE = {"data_version": "d41d8cd98f00", "schema_hash": "abc123", "spec_hash": "f00d", "code_version": "0.1.0"}


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
