"""`modelcycle package` and `modelcycle serve` the way the README's reader runs them: the
console script of `.venv`, from a project folder with the default workdir, in a shell whose
PATH has neither uv nor pip (the venv uv makes has no pip, and the uv `make` fetches is on
PATH only inside make). Packaging builds the modelcycle wheel all the same, and serve starts
from the bento already built instead of building it again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelcycle.serving.local import ServerProcess, free_port, stop_process, wait_ready

CONSOLE_SCRIPT = Path(sys.executable).parent / "modelcycle"
"""The `modelcycle` command of the venv the tests run in."""


@pytest.fixture
def reader_env(tmp_path) -> dict[str, str]:
    """The environment of a shell after `make demo`: a PATH of a folder with only the programs
    serving may call (`nice`, for a shadow), and no variable that uv or make set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("nice",):
        (bin_dir / program).symlink_to(shutil.which(program))
    assert shutil.which("uv", path=str(bin_dir)) is None and shutil.which("pip", path=str(bin_dir)) is None
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("UV_", "VIRTUAL_ENV", "PYTHON", "MAKE", "MFLAGS"))}
    return {**env, "PATH": str(bin_dir)}


@pytest.fixture
def demo_project(tmp_path, served) -> Path:
    """A project folder as `make demo` leaves it: the registry under `.modelcycle/`, no bento yet."""
    project = tmp_path / "project"
    shutil.copytree(served.registry.uri, project / ".modelcycle" / "registry")
    return project


def test_package_then_serve_without_uv_or_pip(demo_project, reader_env, served, in_process):
    assert CONSOLE_SCRIPT.is_file(), f"no console script at {CONSOLE_SCRIPT}: is modelcycle installed in the venv?"
    packaged = subprocess.run([str(CONSOLE_SCRIPT), "package", "fraud@champion"], cwd=demo_project, env=reader_env,
                              capture_output=True, text=True, timeout=600)
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
    assert packaged.stdout.startswith("built: bento fraud:1-"), packaged.stdout
    bentos = demo_project / ".modelcycle" / "bentoml" / "bentos" / "fraud"
    (bento_dir,) = [path for path in bentos.iterdir() if path.is_dir()]
    wheels = list((bento_dir / "env" / "python" / "wheels").glob("modelcycle-*.whl"))
    assert [wheel.name for wheel in wheels] == ["modelcycle-0.1.0-py3-none-any.whl"]
    built_at = (bento_dir / "bento.yaml").stat().st_mtime_ns

    port = free_port()
    log = demo_project / "serve.out"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(CONSOLE_SCRIPT), "serve", "fraud", "--port", str(port)], cwd=demo_project,
                                   env=reader_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    serve = ServerProcess(role="modelcycle serve", url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        wait_ready(serve, timeout_s=240)
        assert f"fraud@1: bento fraud:{bento_dir.name} (already built)" in log.read_text(), log.read_text()
        record = served.records[0]
        answer = httpx.post(f"{serve.url}/predict", json=record, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == in_process(1, [record])[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, serve.log_tail()
    finally:
        stop_process(serve)
    assert [path.name for path in bentos.iterdir() if path.is_dir()] == [bento_dir.name]
    assert (bento_dir / "bento.yaml").stat().st_mtime_ns == built_at


def test_serve_takes_the_wheel_the_bento_was_packaged_with(demo_project, reader_env):
    """``--wheel`` reaches packaging from both verbs: a file that is not a wheel is refused
    before anything starts, naming what was expected."""
    not_a_wheel = demo_project / "modelcycle.tar.gz"
    not_a_wheel.write_bytes(b"not a wheel")
    for verb in (["package", "fraud@champion"], ["serve", "fraud", "--port", str(free_port())]):
        refused = subprocess.run([str(CONSOLE_SCRIPT), *verb, "--wheel", str(not_a_wheel)], cwd=demo_project,
                                 env=reader_env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        said = " ".join(refused.stderr.split())
        assert "--wheel: expected a modelcycle wheel (modelcycle-*.whl), found modelcycle.tar.gz" in said, said
