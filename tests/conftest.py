"""Shared pytest configuration: plugins every test folder may use."""

import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fraud_example import load_generator, small_spec_dict

pytest_plugins = ["modelcycle.cluster.testing"]


def pytest_configure(config) -> None:
    """One signing key for the whole run, never the user's (~/.config/modelcycle): every
    process the tests start signs with it and trusts it, and the operators they start pass
    its public key to the pods they render, as the chart's `signing.trustedKeys` does."""
    from modelcycle import signing

    if signing.KEY_ENV in os.environ:
        return
    key = Path(tempfile.mkdtemp(prefix="modelcycle-test-keys-")) / "signing-key"
    os.environ[signing.KEY_ENV] = str(key)
    os.environ[signing.TRUSTED_ENV] = signing.public_pem(signing.new_key(key).public_key())


@pytest.fixture(scope="session")
def generate_fraud():
    """The bundled example's seeded generator: `generate_fraud(rows, seed=, drift=)`."""
    return load_generator().generate


@pytest.fixture(scope="session")
def fraud_frame(generate_fraud) -> pd.DataFrame:
    return generate_fraud(4000)


@pytest.fixture
def project(tmp_path, fraud_frame):
    """A project folder: the small example spec and its data file, ready to run."""
    (tmp_path / "data").mkdir()
    fraud_frame.to_parquet(tmp_path / "data" / "transactions.parquet", index=False)
    spec_path = tmp_path / "modelcycle.yaml"
    spec_path.write_text(yaml.safe_dump(small_spec_dict(), sort_keys=False))
    return spec_path


@pytest.fixture
def spec(project):
    from modelcycle.spec import load_spec

    return load_spec(project)


def pytest_sessionfinish(session) -> None:
    """A test worker (pytest-xdist) hands its property-based case counts to the controller."""
    from property_cases import CASES

    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["property_cases"] = dict(CASES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """The controller adds up the counts of each worker as it stops."""
    from property_cases import CASES

    CASES.update(getattr(node, "workeroutput", {}).get("property_cases", {}))


def pytest_terminal_summary(terminalreporter) -> None:
    from property_cases import CASES

    if CASES:
        terminalreporter.section("property-based cases")
        for name, count in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {count} cases")
