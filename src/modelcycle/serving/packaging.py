"""Packaging: a registered model version becomes a BentoML bento, ready to containerize.

A bento holds everything a model server needs: the model artifact in the bento's model
store, an entry module that pins the artifact's sha256 and carries the registry's signature
of the version (`modelcycle.serving.bento` refuses other bytes, and a signature that no
trusted key made), a wheel of modelcycle itself, and the Dockerfile BentoML generates from
them (``env/docker/Dockerfile``), which installs that wheel. `bentoml containerize <tag>`
turns it into an image on a machine with a container engine; the image name it will have
is recorded on the model version next to the bento tag (`Registry.annotate`);
`modelcycle.cluster.images.build_bento_image` (``modelcycle package --image``) builds it.

The wheel brings only modelcycle's light base dependencies, so the bento also carries the
packages that serving needs, pinned with their hashes to ``uv.lock`` (the closure of the
``serving`` extra, which holds neither kfp nor kopf) as ``env/python/requirements.txt``.
Without a checkout (modelcycle installed from a wheel), the pins are the versions installed
here.

The wheel is built by hatchling, modelcycle's own build backend and a dependency of its
serving, called directly: packaging needs neither pip nor uv, so it works in any environment
that can run modelcycle's serving (a venv made by uv has no pip).

The bento's version is the model version and a digest of the artifact, the requirements and
the code: the wheel's sha256 when one is given (``--wheel``), else a digest of the checkout's
files that go into the wheel (the files hatchling selects, ``pyproject.toml`` and the readme).
That digest is known without building anything, so packaging the same model with the same
code again, as `modelcycle serve` does at every start, finds the bento in the store in well
under a second and changes nothing, while a change to any of them makes a new bento.

BentoML's stores live under ``<workdir>/bentoml`` (its ``BENTOML_HOME``), never in the
user's home directory. BentoML runs in a child process with that home, so one process can
package into several workdirs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from modelcycle import artifacts
from modelcycle.registry import ModelVersion, Registry, parse_model_ref
from modelcycle.training import TrainedModel

BENTOML_DIR = "bentoml"
BUILD_TIMEOUT_S = 600.0
"""A bento build copies the artifact and renders templates; minutes mean something hangs."""
ENTRY_MODULE = "service"
ENTRY_CLASS = "ModelBento"
IMAGE_EXTRA = "serving"
"""The extra a bento installs: the model server's needs, and neither kfp nor kopf."""
REQUIREMENTS = "requirements.txt"


class PackagingError(RuntimeError):
    """The model version cannot be packaged; the message says why."""


@dataclass(frozen=True)
class PackagedBento:
    """A built bento and where to find it."""

    tag: str
    """The bento's tag in the workdir's BentoML store, ``name:version``."""
    image: str
    """The image name ``bentoml containerize`` gives it."""
    path: str
    """The bento's folder."""
    dockerfile: str
    """The generated Dockerfile, inside the bento."""
    model_tag: str
    """The model's tag in the BentoML model store."""
    built: bool
    """False when an identical bento was already there."""


def bentoml_home(workdir: str | os.PathLike) -> Path:
    return Path(workdir).resolve() / BENTOML_DIR


def bentoml_env(workdir: str | os.PathLike) -> dict[str, str]:
    """The environment of a BentoML process working in `workdir`."""
    return {**os.environ, "BENTOML_HOME": str(bentoml_home(workdir)), "BENTOML_DO_NOT_TRACK": "True"}


def package(registry: Registry, ref: str, *, workdir: str | os.PathLike, wheel: str | os.PathLike | None = None
            ) -> PackagedBento:
    """Build (or find) the bento of `ref` (``name@version`` or ``name@alias``) and record it on the version.

    `wheel` is a modelcycle wheel for the image; without it the wheel is built from the
    checkout this code runs from, and only when the bento is not in the store yet."""
    name, version_ref = parse_model_ref(ref)
    version = registry.get(name, version_ref)
    data = _verified_artifact(registry, version)
    wheel_path = _given_wheel(wheel) if wheel is not None else None
    code = f"wheel-{_sha256_file(wheel_path)}" if wheel_path else f"source-{source_digest()}"
    requirements = serving_requirements()
    signature = version.signature.value  # re-signed with a new key (rotation): a new bento
    digest = hashlib.sha256(f"{version.sha256}\n{signature}\n{code}\n{requirements}".encode()).hexdigest()[:12]
    build = {
        "name": name,
        "version": version.version,
        "sha256": version.sha256,
        "status": version.status,
        "signature": version.signature.model_dump(),
        "model_tag": f"{name}:{version.version}-{version.sha256[:12]}",
        "bento_version": f"{version.version}-{digest}",
        "labels": {"modelcycle.model": name, "modelcycle.version": str(version.version),
                   "modelcycle.sha256": version.sha256, "modelcycle.code": code},
    }
    result = _already_built(workdir, build)
    if result is None:
        with tempfile.TemporaryDirectory(prefix="modelcycle-bento-") as tmp:
            ctx = Path(tmp)
            (ctx / REQUIREMENTS).write_text(requirements)
            result = _build(ctx, build, wheel_path or build_wheel(ctx / "dist"), data, workdir=workdir)
    registry.annotate(name, version.version, bento=result.tag, image=result.image)
    return result


def _given_wheel(wheel: str | os.PathLike) -> Path:
    path = Path(wheel)
    if not path.is_file():
        raise PackagingError(f"--wheel: expected a modelcycle wheel file, found no file at {path}")
    if not (path.name.startswith("modelcycle-") and path.suffix == ".whl"):
        raise PackagingError(f"--wheel: expected a modelcycle wheel (modelcycle-*.whl), found {path.name}")
    return path


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(ctx: Path, build: dict, wheel: Path, data: bytes, *, workdir: str | os.PathLike) -> PackagedBento:
    """Lay out the build folder and run `_build_in_store` on it in a BentoML child process."""
    build = {**build, "wheel": wheel.name,
             "labels": {**build["labels"], "modelcycle.wheel-sha256": _sha256_file(wheel)}}
    shutil.copy(wheel, ctx / wheel.name)
    artifacts.write_atomic(ctx / "model.joblib", data)
    (ctx / f"{ENTRY_MODULE}.py").write_text(_entry_module(build))
    (ctx / "build.json").write_text(json.dumps(build))
    proc = subprocess.run([sys.executable, "-m", __name__, str(ctx)], env=bentoml_env(workdir), cwd=ctx,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        raise PackagingError(f"bento build of {build['name']}@{build['version']} failed:\n"
                             f"{(proc.stdout + proc.stderr)[-3000:]}")
    return PackagedBento(**json.loads((ctx / "result.json").read_text()))


def _already_built(workdir: str | os.PathLike, build: dict) -> PackagedBento | None:
    """The bento of this build if the store has it, found without starting BentoML (seconds)."""
    home = bentoml_home(workdir)
    path = home / "bentos" / build["name"] / build["bento_version"]
    model_name, model_version = build["model_tag"].split(":")
    if not (path / "bento.yaml").is_file() or not (home / "models" / model_name / model_version / "model.yaml").is_file():
        return None
    tag = f"{build['name']}:{build['bento_version']}"
    return PackagedBento(tag=tag, image=tag, path=str(path), dockerfile=str(path / "env" / "docker" / "Dockerfile"),
                         model_tag=build["model_tag"], built=False)


def _verified_artifact(registry: Registry, version: ModelVersion) -> bytes:
    """The artifact's bytes, checked against the manifest's signature and sha256 and unpickled
    once to see that it can serve: a bento of a model without a data schema could not validate
    requests."""
    data = registry.verified_bytes(version)
    model = artifacts.loads(data, sha256=version.sha256, what=version.describe())
    if not isinstance(model, TrainedModel) or model.schema is None:
        raise PackagingError(f"{version.describe()}: not a trained model with a data schema "
                             f"(found {type(model).__name__}); only models registered by the pipeline can be served")
    return data


def _entry_module(build: dict) -> str:
    return f'''"""Model {build["name"]} version {build["version"]}, served by modelcycle. Written by `modelcycle package`."""

import bentoml

from modelcycle.serving.bento import SERVICE_CONFIG, ModelService, RequestEdge


@bentoml.service(name={build["name"]!r}, **SERVICE_CONFIG)
class {ENTRY_CLASS}(ModelService):
    model_ref = bentoml.models.BentoModel({build["model_tag"]!r})
    model_sha256 = {build["sha256"]!r}
    model_status = {build["status"]!r}
    model_signature = {build["signature"]!r}


{ENTRY_CLASS}.add_asgi_middleware(RequestEdge)
'''


def project_root() -> Path | None:
    """The modelcycle checkout this code runs from, if it does."""
    root = Path(__file__).resolve().parents[3]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "modelcycle"' in pyproject.read_text():
        return root
    return None


def _checkout() -> Path:
    root = project_root()
    if root is None:
        raise PackagingError("modelcycle is not running from a checkout, so there is no source to build a wheel "
                             "from; pass --wheel with a modelcycle wheel")
    return root


def source_digest() -> str:
    """A sha256 over what the wheel of the checkout is made of: every file hatchling puts in
    it (by its path in the wheel and its bytes), ``pyproject.toml`` and the readme (the
    wheel's metadata). The same checkout gives the same digest, and nothing is built."""
    from hatchling.builders.wheel import WheelBuilder

    root = _checkout()
    builder = WheelBuilder(str(root))
    files = {included.distribution_path: Path(included.path) for included in builder.recurse_included_files()}
    files["pyproject.toml"] = root / "pyproject.toml"
    if readme := builder.metadata.core.readme_path:
        files[f"readme {readme}"] = root / readme
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{_sha256_file(files[name])}\n".encode())
    return digest.hexdigest()


def serving_requirements() -> str:
    """The bento's requirements: every package of the ``serving`` extra's closure, one
    ``name==version`` line each with its hashes from ``uv.lock`` (the checkout's), else
    pinned to the versions installed here."""
    root = project_root()
    if root is not None and (root / "uv.lock").is_file():
        return _locked_requirements(root / "uv.lock", IMAGE_EXTRA)
    return _installed_requirements(IMAGE_EXTRA)


def _locked_requirements(lock_path: Path, extra: str) -> str:
    from packaging.markers import Marker

    packages: dict[str, dict] = {}
    for package in tomllib.loads(lock_path.read_text())["package"]:
        if package["name"] in packages:
            raise PackagingError(f"{lock_path}: {package['name']} is locked at two versions; "
                                 "a bento's requirements need one")
        packages[package["name"]] = package
    project = packages["modelcycle"]
    todo = [*project.get("dependencies", []), *project.get("optional-dependencies", {})[extra]]
    seen: set[tuple[str, str]] = set()
    while todo:
        dep = todo.pop()
        if "marker" in dep and not Marker(dep["marker"]).evaluate({"extra": ""}):
            continue
        for wanted in ("", *dep.get("extra", [])):
            if (dep["name"], wanted) in seen:
                continue
            seen.add((dep["name"], wanted))
            package = packages[dep["name"]]
            todo += package.get("dependencies", []) if not wanted else package.get("optional-dependencies", {}).get(wanted, [])
    lines = [f"# The closure of modelcycle[{extra}], pinned to uv.lock. Written by `modelcycle package`."]
    for name in sorted({name for name, _ in seen}):
        package = packages[name]
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        hashes = "".join(f" \\\n    --hash={f['hash']}" for f in files if "hash" in f)
        lines.append(f"{name}=={package['version']}{hashes}")
    return "\n".join(lines) + "\n"


def _installed_requirements(extra: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = [(Requirement(f"modelcycle[{extra}]"), "")]
    pins: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    while todo:
        requirement, parent_extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": parent_extra}):
            continue
        name = canonicalize_name(requirement.name)
        for wanted in ("", *requirement.extras):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            dist = metadata.distribution(requirement.name)
            if name != "modelcycle":
                pins[name] = dist.version
            todo += [(Requirement(line), wanted) for line in dist.requires or []]
    lines = [f"# The closure of modelcycle[{extra}], pinned to the versions installed where the bento was built."]
    return "\n".join(lines + [f"{name}=={version}" for name, version in sorted(pins.items())]) + "\n"


def build_wheel(out: Path) -> Path:
    """A wheel of the modelcycle checkout, built by calling hatchling's PEP 517 hook in a child
    process run in the checkout (hatchling builds are reproducible: same code, same bytes)."""
    root = _checkout()
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-c", "import sys, hatchling.build; hatchling.build.build_wheel(sys.argv[1])",
               str(out.resolve())]
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    wheels = sorted(out.glob("modelcycle-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise PackagingError(f"building the modelcycle wheel of {root} with hatchling failed "
                             f"(exit code {proc.returncode}, wheels made: {[w.name for w in wheels]}):\n"
                             f"{(proc.stdout + proc.stderr)[-2000:]}")
    return wheels[-1]


def _build_in_store(ctx: Path) -> None:
    """In the child process, with BENTOML_HOME set: store the model, build the bento."""
    import bentoml
    from bentoml.exceptions import NotFound

    build = json.loads((ctx / "build.json").read_text())
    artifact = ctx / "model.joblib"
    try:
        stored = bentoml.models.get(build["model_tag"])
        if stored.info.labels.get("modelcycle.sha256") != build["sha256"]:
            bentoml.models.delete(build["model_tag"])  # a leftover of another registry: replace it
            raise NotFound(build["model_tag"])
    except NotFound:
        with bentoml.models.create(build["model_tag"], labels=build["labels"],
                                   metadata={"sha256": build["sha256"]}) as model:
            shutil.copy(artifact, Path(model.path) / "model.joblib")
    tag = f"{build['name']}:{build['bento_version']}"
    built = False
    try:
        bento = bentoml.bentos.get(tag)
    except NotFound:
        bento = bentoml.bentos.build(
            f"{ENTRY_MODULE}:{ENTRY_CLASS}",
            name=build["name"],
            version=build["bento_version"],
            build_ctx=str(ctx),
            include=[f"{ENTRY_MODULE}.py"],
            labels=build["labels"],
            description=f"Model {build['name']} version {build['version']} (sha256 {build['sha256']}), "
                        "served by modelcycle.",
            models=[build["model_tag"]],
            python={"requirements_txt": REQUIREMENTS, "wheels": [build["wheel"]], "lock_packages": False},
            docker={"python_version": "3.11"},
        )
        built = True
    path = Path(bento.path)
    dockerfile = path / "env" / "docker" / "Dockerfile"
    if not dockerfile.is_file():
        raise PackagingError(f"bento {bento.tag} has no generated Dockerfile at {dockerfile}")
    result = PackagedBento(tag=str(bento.tag), image=str(bento.tag), path=str(path), dockerfile=str(dockerfile),
                           model_tag=build["model_tag"], built=built)
    (ctx / "result.json").write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build a bento from a prepared build folder (used by `package`).")
    parser.add_argument("ctx", type=Path)
    _build_in_store(parser.parse_args().ctx)
