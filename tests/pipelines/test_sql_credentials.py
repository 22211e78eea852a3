"""A SQL source with a password, end to end through the console script against a real
PostgreSQL: the password comes from the environment variable the spec names, and nothing a
run writes or prints holds it (grepped: every file under the workdir, stdout, stderr)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
import yaml

import sql_server
from fraud_example import small_spec_dict

MODELCYCLE = str(Path(sys.executable).with_name("modelcycle"))


@pytest.fixture(scope="module")
def database(generate_fraud):
    server, process = sql_server.start()
    try:
        engine = sqlalchemy.create_engine(sqlalchemy.engine.make_url(server.url).set(password=server.password))
        with engine.begin() as conn:
            generate_fraud(3000, seed=5).to_sql("transactions", conn, index=False)
        engine.dispose()
        yield server
    finally:
        sql_server.stop(server, process)


def _project(tmp_path: Path, source: dict) -> Path:
    spec = small_spec_dict()
    spec["data"]["source"] = source
    spec["goal"] = {"primary": {"metric": "accuracy", "min": 0.5}}
    spec["training"]["candidates"] = spec["training"]["candidates"][:1]
    path = tmp_path / "modelcycle.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(spec: Path, workdir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([MODELCYCLE, "run", str(spec), "--workdir", str(workdir)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def _files_holding(folder: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_the_password_is_read_from_the_environment_and_written_nowhere(database, tmp_path):
    spec = _project(tmp_path, {"url": database.url, "query": "select * from transactions",
                               "password_env": "MC_DB_PASSWORD"})
    result = _run(spec, tmp_path / "work", {"MC_DB_PASSWORD": database.password})
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"fraud@1\s+registered", result.stdout), result.stdout
    assert database.password not in result.stdout + result.stderr
    assert _files_holding(tmp_path / "work", database.password) == []
    assert _files_holding(tmp_path, database.password) == []
    lineage = (tmp_path / "work" / "data" / "lineage").iterdir()
    assert any(database.url in p.read_text() for p in lineage)  # the source is on record, without the password


def test_a_password_in_the_url_is_refused_and_not_printed(database, tmp_path):
    url = database.url.replace(f"{database.user}@", f"{database.user}:{database.password}@")
    spec = _project(tmp_path, {"url": url, "query": "select * from transactions"})
    result = _run(spec, tmp_path / "work", {})
    assert result.returncode == 2
    assert "data.source" in result.stderr and "password_env" in result.stderr
    assert database.password not in result.stdout + result.stderr
    assert not (tmp_path / "work" / "data").exists()


def test_a_missing_or_wrong_password_fails_clearly_without_printing_it(database, tmp_path):
    spec = _project(tmp_path, {"url": database.url, "query": "select * from transactions",
                               "password_env": "MC_DB_PASSWORD"})
    missing = _run(spec, tmp_path / "a", {"MC_DB_PASSWORD": ""})
    assert missing.returncode != 0
    assert "MC_DB_PASSWORD is not set" in missing.stderr
    wrong = "not-the-password-" + database.password[:4]
    failed = _run(spec, tmp_path / "b", {"MC_DB_PASSWORD": wrong})
    assert failed.returncode != 0
    assert "the SQL query failed" in failed.stderr and "authentication failed" in failed.stderr
    assert wrong not in failed.stdout + failed.stderr
    assert _files_holding(tmp_path / "b", wrong) == []
