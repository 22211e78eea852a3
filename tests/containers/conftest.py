"""Container tests: the images `make images` built, run by the real engine (podman or Docker).

These never skip. Without an engine or without the images, they fail with what to run:
`make images` (which `make test` runs first) installs the engine and builds them.
"""

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from modelcycle.cluster.containers import Engine, EngineError, engine
from modelcycle.cluster.images import IMAGES


@pytest.fixture(scope="session")
def container_engine() -> Engine:
    try:
        eng = engine()
    except EngineError as exc:
        pytest.fail(f"{exc}\nrun `make images` first", pytrace=False)
    missing = [image.tag for image in IMAGES if not eng.exists(image.tag)]
    if missing:
        pytest.fail(f"images not built: {', '.join(missing)}; run `make images`", pytrace=False)
    return eng


@pytest.fixture(scope="session")
def docker_host(container_engine: Engine, tmp_path_factory) -> Iterator[str]:
    """A Docker-compatible API for kfp.local.DockerRunner: Docker's own, or podman's
    `podman system service` on a socket of this test run."""
    if container_engine.name == "docker":
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    folder = tmp_path_factory.mktemp("podman-service")
    socket_path = folder / "podman.sock"
    log = open(folder / "service.log", "wb")
    service = subprocess.Popen([container_engine.command, "system", "service", "--time=0", f"unix://{socket_path}"],
                               env=container_engine.environ(), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 30
    while not socket_path.exists() and service.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not socket_path.exists():
        service.kill()
        pytest.fail(f"podman system service did not open {socket_path}: {(folder / 'service.log').read_text()[-2000:]}",
                    pytrace=False)
    try:
        yield f"unix://{socket_path}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.kill()
        log.close()
