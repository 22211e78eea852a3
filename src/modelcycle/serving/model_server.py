"""The model server: any registered version, read from the registry at start-up, behind a bento's HTTP contract.

A bento is built per version (`packaging`), so a version a retraining registered needs an
image built before a pod can serve it. The model server is one image for every version,
KServe's storageUri pattern: it is told the registry and the version, and loads it when it
starts::

    python -m modelcycle.serving.model_server --registry s3://ml/modelcycle/registry --model fraud@3 --port 3000

It answers exactly as a bento does (``/predict``, ``/predict_batch``, ``/readyz``,
``/livez``, ``/metrics``; `modelcycle.serving.contract`), because it is the bento's
`ModelService` with `ModelService.load_model` reading from the registry instead of a
bento's model store.

Before anything else the command resolves the version (an alias becomes its number, so a
champion moved during start-up cannot change what is served), reads its artifact and checks
the registry's signature and the sha256 (`Registry.verified_bytes`), with the keys of
``MODELCYCLE_TRUSTED_KEYS`` (`modelcycle.signing`). A version it cannot vouch for is refused:
the reason goes to stderr and to the pod's termination message (``/dev/termination-log``),
and the process exits with `REFUSED` without ever listening, so a pod never becomes ready
with it. Only then does it become ``bentoml serve`` on this module's service (by ``exec``:
the same process id, so the container's signals reach BentoML), whose worker reads the
version again, verifies it again and only then unpickles it.

The registry is a folder or any fsspec URL; an ``s3://`` one takes its credentials from the
standard ``AWS_*`` environment. BentoML writes only under ``BENTOML_HOME`` (``/tmp/bentoml``
in the modelcycle image), so the server runs as a non-root user on a read-only root
filesystem with ``/tmp`` writable.
"""

from __future__ import annotations

import argparse
import os
import sys

import bentoml

from modelcycle import artifacts
from modelcycle.registry import ModelVersion, Registry, RegistryError, parse_model_ref
from modelcycle.serving.bento import SERVICE_CONFIG, LoadedModel, ModelService, RequestEdge

REGISTRY_ENV = "MODELCYCLE_MODEL_SERVER_REGISTRY"
MODEL_ENV = "MODELCYCLE_MODEL_SERVER_MODEL"
"""How the command tells the service's worker what to load: ``NAME@NUMBER``, already resolved."""
DEFAULT_PORT = 3000
"""BentoML's port, which the bentos' Deployments use too."""
REFUSED = 3
"""The exit code when the version cannot be served (unknown, unsigned, tampered with, unreadable)."""
TERMINATION_LOG = "/dev/termination-log"


@bentoml.service(name="modelcycle-model-server", **SERVICE_CONFIG)
class ModelServer(ModelService):
    """A bento's service whose model comes from the registry the command was given."""

    def load_model(self) -> LoadedModel:
        name, number = parse_model_ref(os.environ[MODEL_ENV])
        registry = Registry(os.environ[REGISTRY_ENV])
        version = registry.get(name, number)
        model = artifacts.loads(registry.verified_bytes(version), sha256=version.sha256, what=version.describe())
        return LoadedModel(name=name, version=str(version.version), sha256=version.sha256, model=model,
                           what=version.describe())


ModelServer.add_asgi_middleware(RequestEdge)


def resolve(registry: Registry, model: str) -> ModelVersion:
    """The version `model` (``NAME@VERSION``, ``NAME@ALIAS`` or ``NAME``) names, once its
    signature and sha256 are checked; nothing is unpickled here."""
    name, ref = parse_model_ref(model)
    version = registry.get(name, ref)
    registry.verified_bytes(version)
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelcycle.serving.model_server",
                                     description="Serve a registered model version, loaded from the registry.")
    parser.add_argument("--registry", required=True, help="the registry's folder or fsspec URL (s3://...)")
    parser.add_argument("--model", required=True, help="NAME@VERSION, NAME@ALIAS or NAME (its latest version)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    try:
        version = resolve(Registry(args.registry), args.model)
    except (RegistryError, artifacts.ArtifactIntegrityError, KeyError, ValueError) as exc:
        reason = f"model server: refusing to serve {args.model} from {args.registry}: {exc}"
        print(reason, file=sys.stderr, flush=True)
        _termination_message(reason)
        return REFUSED
    print(f"model server: serving {version.name}@{version.version} (sha256 {version.sha256}, signed by key "
          f"{version.signature.key_id}) on {args.host}:{args.port}", file=sys.stderr, flush=True)
    env = {**os.environ, REGISTRY_ENV: args.registry, MODEL_ENV: f"{version.name}@{version.version}",
           "BENTOML_DO_NOT_TRACK": "True"}
    command = [sys.executable, "-m", "bentoml", "serve", f"{__spec__.name}:ModelServer",
               "--host", args.host, "--port", str(args.port)]
    os.execve(sys.executable, command, env)


def _termination_message(reason: str) -> None:
    """Kubernetes shows this file's text as the container's termination message; it is
    written only where Kubernetes made it (r+ creates nothing)."""
    try:
        with open(TERMINATION_LOG, "r+") as fh:
            fh.truncate()
            fh.write(reason[-4096:])
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
