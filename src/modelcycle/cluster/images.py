"""The images modelcycle ships, built here with whatever container engine there is.

    python -m modelcycle.cluster.images            # what `make images` runs
    python -m modelcycle.cluster.images --save DIR # and an OCI archive of each, for air-gapped clusters
    eval "$(python -m modelcycle.cluster.images --env)"   # then podman by hand: tag, push

Two images come from this checkout, each reproducible from `uv.lock`, non-root, and
labelled with OCI annotations (source, version, revision):

- the modelcycle image (`Dockerfile`): the Kubeflow components and the gateway, with the
  ``pipelines`` and ``serving`` extras;
- the operator image (`operator.Dockerfile`): the Kopf operator, with the ``operator`` extra.

A third kind, one per model version, is the bento's image (`build_bento_image`, which
``modelcycle package --image`` runs). It is built from `BENTO_DOCKERFILE`, a Dockerfile of
our own over the bento folder, rather than BentoML's generated one: that one pip-installs
uv (the Debian base has no pip), apt-installs a compiler, and keeps BENTOML_HOME in a home
folder that a read-only root filesystem cannot write. Ours installs the bento's
``env/python/requirements.txt`` (pinned with hashes to ``uv.lock``: the ``serving`` extra,
neither kfp nor kopf) and its modelcycle wheel in a build stage, then copies the venv and
the bento with its model. The layers before the bento's own are the same for every model
version of the same code, so production and shadow images share them, and a second model
version builds in seconds from the engine's cache.

Every Dockerfile takes ``ARG BASE_IMAGE``. Where the public Python 3.11 slim image can be
pulled, it is the base. Where no image registry can be reached, a base is made from Debian
packages with mmdebstrap (``minbase`` plus python3, python3-venv and ca-certificates:
Python 3.11 on bookworm, as in the lock), kept as a tarball with its sha256 in the cache
folder, and imported under a local name; a later run re-imports the tarball, or finds the
image already there, and never bootstraps twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from modelcycle import __version__
from modelcycle.cluster.containers import Engine, EngineError, cache_dir, engine, ensure_tools

PUBLIC_BASE = "docker.io/library/python:3.11-slim"
LOCAL_BASE = "localhost/modelcycle-base:bookworm-python3.11"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
REPOSITORY = "modelcycle"
PYTHON_IMAGE = f"{REPOSITORY}/modelcycle-python:{__version__}"
"""The components' and the gateway's image; `MODELCYCLE_IMAGE` and the chart default to it."""
OPERATOR_IMAGE = f"{REPOSITORY}/modelcycle-operator:{__version__}"
SOURCE_URL = "https://github.com/modelcycle/modelcycle"
BENTO_UID = 1034
"""The bento image's user, ``bentoml``, with BentoML's own uid (the operator runs model servers as it)."""
BENTO_DOCKERFILE = f"""\
# A bento's image, written by modelcycle (modelcycle.cluster.images.build_bento_image).
# The build context is the bento folder with its model under models/. The dependencies'
# layer depends only on the bento's requirements (uv.lock), the code's only on its wheel:
# every model version of the same lock shares the first, of the same code both.
ARG BASE_IMAGE=python:3.11-slim

FROM ${{BASE_IMAGE}} AS deps
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON=python3 UV_PYTHON_DOWNLOADS=never \\
    VIRTUAL_ENV=/app/.venv SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir --quiet uv==0.13.9 \\
    && /opt/uv/bin/uv venv /app/.venv
COPY env/python/requirements.txt /build/requirements.txt
RUN --mount=type=cache,target=/root/.cache/uv /opt/uv/bin/uv pip install --verify-hashes -r /build/requirements.txt

FROM deps AS code
COPY env/python/wheels/ /build/wheels/
RUN /opt/uv/bin/uv pip install --no-deps --target /build/site-packages /build/wheels/*.whl

FROM ${{BASE_IMAGE}}
RUN groupadd -g {BENTO_UID} bentoml && useradd -u {BENTO_UID} -g {BENTO_UID} -r -M -d /home/bentoml -s /usr/sbin/nologin bentoml
COPY --from=deps /app/.venv /app/.venv
COPY --from=code /build/site-packages/ /app/.venv/lib/python3.11/site-packages/
# BentoML writes its home (metrics, sockets) at start-up: /tmp, an emptyDir on Kubernetes,
# so the root filesystem can be read-only. The model comes from the bento's models/.
ENV PATH=/app/.venv/bin:$PATH VIRTUAL_ENV=/app/.venv LANG=C.UTF-8 LC_ALL=C.UTF-8 \\
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp BENTOML_HOME=/tmp/bentoml \\
    MPLCONFIGDIR=/tmp/matplotlib BENTO_PATH=/home/bentoml/bento BENTOML_CONTAINERIZED=true \\
    BENTOML_DO_NOT_TRACK=True
COPY . /home/bentoml/bento
USER {BENTO_UID}
WORKDIR /home/bentoml/bento
EXPOSE 3000
ENTRYPOINT ["bash", "/home/bentoml/bento/env/docker/entrypoint.sh"]
"""


@dataclass(frozen=True)
class ImageSpec:
    """An image built from this checkout."""

    tag: str
    dockerfile: str
    title: str


IMAGES = (
    ImageSpec(tag=PYTHON_IMAGE, dockerfile="Dockerfile", title="modelcycle components and gateway"),
    ImageSpec(tag=OPERATOR_IMAGE, dockerfile="operator.Dockerfile", title="modelcycle operator"),
)


@dataclass
class BuiltImage:
    tag: str
    seconds: float
    size_mb: float
    archive: str | None = None


def project_root() -> Path:
    root = Path(__file__).resolve().parents[3]
    if not (root / "Dockerfile").is_file():
        raise EngineError(f"no Dockerfile in {root}: images are built from a modelcycle checkout")
    return root


def revision(root: Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def oci_labels(*, title: str, root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.source": SOURCE_URL,
        "org.opencontainers.image.version": __version__,
        "org.opencontainers.image.revision": revision(root),
        "org.opencontainers.image.licenses": "Apache-2.0",
        **(extra or {}),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def debian_base(eng: Engine, *, say=print) -> str:
    """The local Debian base image, bootstrapped once with mmdebstrap and kept as a tarball."""
    if eng.exists(LOCAL_BASE):
        return LOCAL_BASE
    folder = cache_dir() / "base"
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / f"{DEBIAN_SUITE}-python3.11.tar"
    checksum = tarball.with_name(tarball.name + ".sha256")
    if not (tarball.is_file() and checksum.is_file() and checksum.read_text().split()[0] == _sha256(tarball)):
        ensure_tools(["mmdebstrap"])
        say(f"bootstrapping the base image from Debian packages ({DEBIAN_SUITE}: {', '.join(DEBIAN_PACKAGES)}) ...")
        started = time.perf_counter()
        tmp = tarball.with_name(tarball.name + ".tmp")
        command = [
            "mmdebstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
            "--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/*",
            "--format=tar", DEBIAN_SUITE, str(tmp),
        ]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise EngineError(f"mmdebstrap failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        tmp.replace(tarball)
        checksum.write_text(f"{_sha256(tarball)}  {tarball.name}\n")
        say(f"  {tarball} ({tarball.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s")
    eng.run("import", "--change", "CMD [\"python3\"]", str(tarball), LOCAL_BASE)
    return LOCAL_BASE


def base_image(eng: Engine, *, requested: str | None = None, say=print) -> str:
    """`requested`, else the public Python 3.11 slim image if it is here or can be pulled,
    else the local Debian base."""
    if requested:
        return requested
    if eng.exists(PUBLIC_BASE):
        return PUBLIC_BASE
    try:
        if eng.run("pull", "-q", PUBLIC_BASE, check=False, timeout=120).returncode == 0:
            return PUBLIC_BASE
    except subprocess.TimeoutExpired:
        pass
    say(f"{PUBLIC_BASE} cannot be pulled (no image registry reachable): using a local Debian base")
    return debian_base(eng, say=say)


def build_all(*, base: str | None = None, save_dir: Path | None = None, say=print,
              images: tuple[ImageSpec, ...] = IMAGES) -> list[BuiltImage]:
    """Build every image of this checkout (the engine's layer cache makes a warm run quick)."""
    eng = engine(install_missing=True)
    root = project_root()
    base = base_image(eng, requested=base, say=say)
    logs = cache_dir() / "logs"
    built = []
    for image in images:
        say(f"building {image.tag} ({image.dockerfile}, base {base}) ...")
        started = time.perf_counter()
        eng.build(context=root, dockerfile=root / image.dockerfile, tag=image.tag, build_args={"BASE_IMAGE": base},
                  labels=oci_labels(title=image.title, root=root), log=logs / f"{image.dockerfile}.log")
        result = BuiltImage(tag=image.tag, seconds=round(time.perf_counter() - started, 1),
                            size_mb=round(eng.size_bytes(image.tag) / 1e6, 1))
        if save_dir:
            archive = save_dir / (image.tag.replace("/", "_").replace(":", "_") + ".oci.tar")
            result.archive = str(eng.save(image.tag, archive))
        say(f"  {image.tag}: {result.size_mb:.0f} MB in {result.seconds:.0f} s"
            + (f", saved to {result.archive}" if result.archive else ""))
        built.append(result)
    (cache_dir() / "images.json").write_text(json.dumps([asdict(b) for b in built], indent=2))
    return built


class PackagedBento(Protocol):
    """What building a bento's image reads of a packaged bento
    (`modelcycle.serving.packaging.PackagedBento`): the container engine knows nothing of
    BentoML, and serving nothing of the engine."""

    tag: str
    image: str
    path: str
    model_tag: str


def bento_context(bento: PackagedBento, folder: Path) -> Path:
    """Lay out `bento`'s build context in `folder`: the bento and its model, in a model
    store under ``models/`` (where BentoML looks inside a bento), plus the Dockerfile."""
    context = folder / "context"
    shutil.copytree(bento.path, context, ignore=shutil.ignore_patterns("models"))
    store = Path(bento.path).parents[2] / "models"
    name, version = bento.model_tag.split(":")
    if not (store / name / version / "model.yaml").is_file():
        raise EngineError(f"bento {bento.tag}: its model {bento.model_tag} is not in {store}")
    shutil.copytree(store / name / version, context / "models" / name / version)
    (context / "models" / name / "latest").write_text(version)
    # BentoML makes its stores private to their owner (0700 folders): in the image, root
    # owns the bento and the bento user only reads it.
    for path in (context, *context.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (folder / "Dockerfile").write_text(BENTO_DOCKERFILE)
    return context


def bento_labels(bento: PackagedBento) -> dict[str, str]:
    """OCI annotations of a bento image: the code (source, version, revision) and the model
    (name, version, the artifact's sha256), read from the bento's own labels."""
    import yaml

    info = yaml.safe_load((Path(bento.path) / "bento.yaml").read_text())["labels"]
    root = Path(__file__).resolve().parents[3]
    return oci_labels(title=f"model {info['modelcycle.model']} version {info['modelcycle.version']}", root=root, extra={
        "org.opencontainers.image.description": f"BentoML bento {bento.tag}, served by modelcycle",
        "io.modelcycle.bento": bento.tag,
        "io.modelcycle.model": info["modelcycle.model"],
        "io.modelcycle.model-version": str(info["modelcycle.version"]),
        "io.modelcycle.artifact-sha256": info["modelcycle.sha256"],
    })


def build_bento_image(bento: PackagedBento, *, eng: Engine | None = None, base: str | None = None,
                      save_dir: Path | None = None, say=print) -> BuiltImage:
    """Build the image of `bento` (tagged `bento.image`), or find it: the tag holds a digest of
    the model and the code, so an image of that tag is this bento's. `save_dir` also gets
    an OCI archive of it."""
    eng = eng or engine(install_missing=True)
    started = time.perf_counter()
    if not eng.exists(bento.image):
        base = base_image(eng, requested=base, say=say)
        say(f"building {bento.image} (bento {bento.tag}, base {base}) ...")
        with tempfile.TemporaryDirectory(prefix="modelcycle-bento-image-") as tmp:
            context = bento_context(bento, Path(tmp))
            eng.build(context=context, dockerfile=Path(tmp) / "Dockerfile", tag=bento.image,
                      build_args={"BASE_IMAGE": base}, labels=bento_labels(bento),
                      log=cache_dir() / "logs" / f"bento-{bento.image.replace('/', '_').replace(':', '_')}.log")
    result = BuiltImage(tag=bento.image, seconds=round(time.perf_counter() - started, 1),
                        size_mb=round(eng.size_bytes(bento.image) / 1e6, 1))
    if save_dir:
        archive = save_dir / (bento.image.replace("/", "_").replace(":", "_") + ".oci.tar")
        result.archive = str(eng.save(bento.image, archive))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelcycle.cluster.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help=f"base image (default: {PUBLIC_BASE} if it can be pulled, else a local "
                                       "Debian base made with mmdebstrap)")
    parser.add_argument("--save", type=Path, metavar="DIR", help="also write each image as an OCI archive into DIR")
    parser.add_argument("--env", action="store_true",
                        help="only print the variables that point podman at modelcycle's configuration "
                             "(eval \"$(... --env)\" before running podman by hand, e.g. to push)")
    args = parser.parse_args(argv)
    if args.env:
        try:
            eng = engine()
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for key, value in eng.env.items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    started = time.perf_counter()
    try:
        build_all(base=args.base, save_dir=args.save)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"images ready in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
