"""The model registry: every model that training produced, with its proof and its history.

Every model that training produced is kept as a numbered, immutable `ModelVersion`: the
pickled artifact and its sha256, the lineage that made it (data version, schema hash, spec
hash, code version, pipeline run, evaluation report, parent version), its parameters and
metrics, how it was selected among the candidates, and a status with the gate results that
decided it: `registered` (it passed every gate) or `rejected` (it failed one, and is kept
for the record). Aliases such as `champion` and `challenger` are movable names for
registered versions; a rejected version can never be the champion. Manifests written
before the status was called `registered` say `candidate`, and read as `registered`.

Every version is signed when it is registered, with a key kept outside the registry
(`modelcycle.signing`): the signature covers the name, the number, the artifact's sha256
and the status, and is recorded in the manifest with the key's id. The artifact is loaded
only after the signature verifies with a trusted key and the bytes match the sha256, so a
pickle replaced together with its sha256 is refused before it can run any code. A version
registered before signing existed is refused until `Registry.sign` signs it.

The registry lives in a local folder by default, or at any fsspec URL (`memory://`,
`file://`, `s3://`, ...)::

    <root>/<name>/aliases.json                    {"champion": 3, "challenger": 4}
    <root>/<name>/.lock                           local folders only
    <root>/<name>/versions/<n>/.claim             who took the number n, and when
    <root>/<name>/versions/<n>/model.joblib       the artifact (joblib, compressed)
    <root>/<name>/versions/<n>/version.json       the manifest: a ModelVersion without aliases

A version exists only once its manifest exists, and the manifest is written last, so a
registration that crashed half-way leaves a folder that readers ignore; its number is
never reused, which leaves a gap. Each file is replaced atomically: on a local disk by
writing a temporary file and renaming it over the old one, on object stores by a single
whole-object write, which readers see all at once or not at all.

Concurrency. A registration takes a version number by creating that number's `.claim` file
exclusively, and tries the next number if another writer got there first. On a local
filesystem the number is chosen and claimed under a file lock per model, which also guards
the read-modify-write of `aliases.json` and of a manifest's annotations: any number of
processes on one machine (or on a shared filesystem with working locks) never share a
version number and never lose an alias change. Object stores have no lock. There the claim
is an exclusive create where the fsspec backend makes `pipe_file(mode="create")` exclusive
(the memory filesystem does, and so does a backend that maps it to a conditional write such
as S3's `If-None-Match`); elsewhere it is a check, a write and a read-back of a unique
token, which narrows the race but does not close it. Two writers that change aliases of the
same model at the same moment on an object store may lose one of the two changes.

Registering the same bytes and lineage twice makes two versions, as in other registries:
a version records an event (this run produced this model), not only content. Setting an
alias to where it already points, or removing one that is not set, changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import fsspec
from filelock import FileLock
from fsspec.implementations.local import LocalFileSystem
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError, field_validator

from modelcycle import artifacts, signing
from modelcycle.spec import CandidateScore, Gate

DEFAULT_URI = os.path.join(".modelcycle", "registry")
LOCK_TIMEOUT_S = 60.0
"""How long a registration waits for another process holding the model's lock; a
registration holds it only to pick a number, an alias change only to rewrite one file."""
CLAIM_ATTEMPTS = 100
"""Numbers tried before a registration gives up; each failed try means another writer won one."""

NAME_RULE = "1-63 characters: lowercase letters, digits and '-', starting and ending with a letter or digit"
ALIAS_RULE = ("1-63 characters: lowercase letters, digits and '-', starting with a letter and ending with a letter "
              "or digit, and not 'latest'")
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_ALIAS = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
MANIFEST, ARTIFACT, CLAIM, ALIASES = "version.json", "model.joblib", ".claim", "aliases.json"
PROFILE = "profile.json"
"""The reference profile of a version (`modelcycle.monitoring.profiles`), when evaluation made one."""


class RegistryError(Exception):
    """The registry cannot do what was asked; the message says why."""


class InvalidName(RegistryError, ValueError):
    """A model or alias name breaks the naming rule."""


class ModelNotFound(RegistryError, KeyError):
    """No such model, version or alias; the message lists what exists."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class ArtifactIntegrityError(RegistryError, artifacts.ArtifactIntegrityError):
    """The artifact's bytes do not match the manifest's sha256; nothing was unpickled."""


class SignatureError(ArtifactIntegrityError, signing.SignatureError):
    """The version's signature is missing, by a key not trusted here, or does not match; nothing was unpickled."""


class SigningKeyError(RegistryError, signing.SigningKeyError):
    """The signing key or the trusted keys cannot be read."""


@contextlib.contextmanager
def _signing_errors():
    """Signing's errors as the registry's, which every caller of the registry handles."""
    try:
        yield
    except signing.SignatureError as exc:
        raise SignatureError(str(exc)) from None
    except signing.SigningKeyError as exc:
        raise SigningKeyError(str(exc)) from None


class Lineage(BaseModel):
    """Where a model came from. The schema is kept as a hash: the schema itself is stored
    with the data version. Extra fields are kept as given."""

    model_config = ConfigDict(extra="allow")
    data_version: str | None = None
    data_uri: str | None = None
    """Where that data version is stored: its folder or object-store URL."""
    schema_hash: str | None = None
    spec_hash: str | None = None
    code_version: str | None = None
    parent_version: int | None = None
    """The version this one was measured against and would replace (the champion when it was
    registered), or, when there was no champion, the newest version before it."""
    run_id: str | None = None
    """The pipeline run that trained it (the Kubeflow run's id)."""
    report: str | None = None
    """Where that run's evaluation report is: a path or a URL."""


Status = Literal["registered", "rejected"]


class ModelVersion(BaseModel):
    name: str
    version: int
    created_at: AwareDatetime
    sha256: str
    size_bytes: int
    artifact_uri: str
    status: Status
    """`registered` when it passed every gate, `rejected` when it failed one."""
    gates: list[Gate] = []
    lineage: Lineage
    params: dict[str, Any]
    metrics: dict[str, Any]
    candidates: list[CandidateScore] = []
    """Every candidate of the run that produced it, with its cross-validated score; the selected one is marked."""
    selection: str = ""
    """Why this candidate was selected, in words."""
    aliases: list[str] = []
    """Filled in when read, from the model's aliases.json; not stored in the manifest."""
    annotations: dict[str, str] = {}
    """Set after registration, by packaging for instance (bento tag, image name)."""
    signature: signing.Signature | None = None
    """The registry's signature of `statement`; None for a version registered before signing."""

    def statement(self) -> bytes:
        """What the signature vouches for: name, number, the artifact's sha256 and status."""
        return signing.statement(name=self.name, version=self.version, sha256=self.sha256, status=self.status)

    def describe(self) -> str:
        return f"model {self.name} version {self.version}: {self.artifact_uri}"

    @field_validator("status", mode="before")
    @classmethod
    def _former_name(cls, value: Any) -> Any:
        return "registered" if value == "candidate" else value


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidName(f"model name {name!r} is invalid: it must be {NAME_RULE}")
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or alias == "latest" or not _ALIAS.fullmatch(alias):
        raise InvalidName(f"alias {alias!r} is invalid: it must be {ALIAS_RULE}")
    return alias


def parse_model_ref(text: str) -> tuple[str, str | int]:
    """`fraud@champion` -> ("fraud", "champion"), `fraud@3` -> ("fraud", 3), `fraud` -> ("fraud", "latest")."""
    name, at, ref = text.partition("@")
    check_name(name)
    if not at:
        return name, "latest"
    if ref.isdigit():
        return name, int(ref)
    if ref != "latest":
        check_alias(ref)
    return name, ref


class Registry:
    """Model versions and aliases under one folder or fsspec URL."""

    def __init__(self, uri: str | os.PathLike = DEFAULT_URI, *, storage_options: dict | None = None,
                 keyring: signing.Keyring | None = None):
        """`keyring` signs new versions and verifies them before loading; by default the one
        the environment describes (`signing.Keyring.from_environment`), read when first needed."""
        self.uri = os.fspath(uri)
        self._keyring = keyring
        self.fs, root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    @property
    def keyring(self) -> signing.Keyring:
        if self._keyring is None:
            with _signing_errors():
                self._keyring = signing.Keyring.from_environment()
        return self._keyring

    # -- reading ---------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Names of the models with at least one complete version."""
        manifests = self.fs.glob(f"{self.root}/*/versions/*/{MANIFEST}")
        return sorted({path[len(self.root) + 1 :].split("/")[0] for path in manifests})

    def versions(self, name: str) -> list[ModelVersion]:
        """Every complete version of `name`, oldest first."""
        aliases = self._aliases(check_name(name))
        found = [self._read(name, n, aliases) for n in self._complete(name)]
        if not found:
            raise self._unknown(name)
        return found

    def get(self, name: str, ref: str | int = "latest") -> ModelVersion:
        """A version by number (3 or "3"), by alias ("champion") or the newest ("latest")."""
        numbers = self._complete(check_name(name))
        if not numbers:
            raise self._unknown(name)
        aliases = self._aliases(name)
        if ref == "latest":
            number = numbers[-1]
        elif isinstance(ref, int) or ref.isdigit():
            number = int(ref)
            if number not in numbers:
                listed = ", ".join(map(str, numbers))
                raise ModelNotFound(f"model {name!r} has no version {number}; versions: {listed}")
        elif ref in aliases:
            number = aliases[ref]
        else:
            listed = ", ".join(f"{a} -> {n}" for a, n in sorted(aliases.items())) or "(none)"
            raise ModelNotFound(f"model {name!r} has no alias {ref!r}; aliases: {listed}")
        return self._read(name, number, aliases)

    def load(self, name: str, ref: str | int = "latest") -> object:
        """The model object, unpickled only after its signature verifies and its bytes match
        the signed sha256."""
        version = self.get(name, ref)
        return artifacts.loads(self.verified_bytes(version), sha256=version.sha256, what=version.describe())

    def verified_bytes(self, version: ModelVersion) -> bytes:
        """The artifact of `version`, read once it is known that a trusted key signed its
        manifest and that the bytes match the signed sha256; raise `ArtifactIntegrityError`
        (a `signing.SignatureError` for the signature) otherwise."""
        with _signing_errors():
            self.keyring.verify(version.statement(), version.signature, what=version.describe())
        return self._artifact(version)

    def _artifact(self, version: ModelVersion) -> bytes:
        """The artifact's bytes, checked against the manifest's sha256 (not its signature)."""
        what = version.describe()
        path = f"{self._dir(version.name, version.version)}/{ARTIFACT}"
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            raise ArtifactIntegrityError(f"{what}: the artifact is missing") from None
        found = hashlib.sha256(data).hexdigest()
        if found != version.sha256:
            raise ArtifactIntegrityError(f"{what}: sha256 mismatch, expected {version.sha256}, found {found}; "
                                         "refusing to unpickle it")
        return data

    def profile(self, name: str, ref: str | int = "latest") -> dict[str, Any] | None:
        """The reference profile stored with a version, as JSON; None for a version without one."""
        version = self.get(name, ref)
        try:
            return json.loads(self.fs.cat_file(f"{self._dir(name, version.version)}/{PROFILE}"))
        except FileNotFoundError:
            return None

    # -- writing ---------------------------------------------------------------------------

    def register(self, name: str, model: object | bytes, *, lineage: Lineage | dict, params: dict, metrics: dict,
                 status: Status = "registered", gates: Iterable[Gate | dict] = (),
                 candidates: Iterable[CandidateScore | dict] = (), selection: str = "",
                 profile: dict[str, Any] | None = None) -> ModelVersion:
        """Store `model` as the next version of `name` and return that version.

        Everything is validated before anything is written. A `registered` version must have
        passed all its gates: a model that failed one is stored with status `rejected`.
        `profile`, the reference profile drift checks compare live data with, is stored next
        to the manifest (`PROFILE`) and read back with `profile`.
        """
        check_name(name)
        # Bytes are the artifact as evaluation saved and checked it, stored as they are, so that
        # the registered sha256 is that of the bytes evaluated; an object is pickled here.
        data = model if isinstance(model, bytes) else artifacts.dumps(model)
        try:
            draft = ModelVersion(
                name=name, version=0, created_at=datetime.now(UTC), sha256=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data), artifact_uri="", status=status,
                gates=[Gate.model_validate(g, from_attributes=True) for g in gates],
                lineage=Lineage.model_validate(lineage, from_attributes=True), params=params, metrics=metrics,
                candidates=[CandidateScore.model_validate(c, from_attributes=True) for c in candidates],
                selection=selection,
            )
            draft.model_dump_json()  # params and metrics must be JSON: find out before writing anything
        except (ValidationError, ValueError) as exc:
            raise RegistryError(f"cannot register model {name!r}: {exc}") from exc
        failed = [g.name for g in draft.gates if not g.passed]
        if draft.status == "registered" and failed:
            raise RegistryError(f"model {name!r} failed gates {', '.join(failed)}: store it with status 'rejected'")
        with _signing_errors():
            self.keyring.signer()  # a missing or unreadable key fails here, before a number is taken

        number = self._claim(name)
        folder = self._dir(name, number)
        self._write(f"{folder}/{ARTIFACT}", data)
        if profile is not None:
            self._write(f"{folder}/{PROFILE}", json.dumps(profile, separators=(",", ":")).encode())
        uri = self.fs.unstrip_protocol(f"{folder}/{ARTIFACT}")
        version = draft.model_copy(update={"version": number, "artifact_uri": uri})
        with _signing_errors():
            version.signature = self.keyring.sign(version.statement())
        self._write(f"{folder}/{MANIFEST}", version.model_dump_json(indent=2, exclude={"aliases"}).encode())
        return version

    def sign(self, name: str, ref: str | int = "latest") -> ModelVersion:
        """Sign a version with the keyring's signing key, and return it.

        A signed version is re-signed only once its current signature verifies (key rotation:
        the old key must still be trusted). An unsigned one, registered before signing existed,
        is signed once its bytes match its recorded sha256: whoever signs it vouches that the
        manifest was not tampered with until now. Nothing is unpickled."""
        self.get(name, ref)  # an unknown model fails here, before its folder is created for the lock
        with self._lock(name):
            current = self.get(name, ref)
            if current.signature is not None:
                self.verified_bytes(current)
            else:
                self._artifact(current)
            with _signing_errors():
                signed = current.model_copy(update={"signature": self.keyring.sign(current.statement())})
            path = f"{self._dir(name, current.version)}/{MANIFEST}"
            self._write(path, signed.model_dump_json(indent=2, exclude={"aliases"}).encode())
        return signed

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point `alias` at `version`, moving it if it pointed elsewhere."""
        check_alias(alias)
        target = self.get(name, int(version))
        if alias == "champion" and target.status == "rejected":
            failed = ", ".join(g.name for g in target.gates if not g.passed) or "none recorded"
            raise RegistryError(f"model {name!r} version {target.version} was rejected (failed gates: {failed}); "
                                "a rejected version cannot be champion")
        with self._lock(name):
            aliases = self._aliases(name)
            if aliases.get(alias) != target.version:
                self._write(self._alias_path(name), json.dumps({**aliases, alias: target.version}, indent=2).encode())

    def remove_alias(self, name: str, alias: str) -> None:
        """Remove `alias`; removing one that is not set changes nothing."""
        if not self._complete(check_name(name)):
            raise self._unknown(name)
        with self._lock(name):
            aliases = self._aliases(name)
            if aliases.pop(alias, None) is not None:
                self._write(self._alias_path(name), json.dumps(aliases, indent=2).encode())

    def annotate(self, name: str, version: int, **annotations: str) -> ModelVersion:
        """Add or replace annotations on a version; the rest of the manifest never changes."""
        self.get(name, int(version))  # an unknown model fails here, before its folder is created for the lock
        with self._lock(name):
            current = self.get(name, int(version))
            try:
                updated = ModelVersion.model_validate(
                    {**current.model_dump(), "annotations": {**current.annotations, **annotations}})
            except ValidationError as exc:
                raise RegistryError(f"cannot annotate model {name!r} version {version}: {exc}") from exc
            if updated.annotations != current.annotations:
                path = f"{self._dir(name, current.version)}/{MANIFEST}"
                self._write(path, updated.model_dump_json(indent=2, exclude={"aliases"}).encode())
        return updated

    # -- storage ---------------------------------------------------------------------------

    def _unknown(self, name: str) -> ModelNotFound:
        known = ", ".join(self.models()) or "(none)"
        return ModelNotFound(f"model {name!r} not found in registry {self.uri}; known models: {known}")

    def _dir(self, name: str, number: int | None = None) -> str:
        return f"{self.root}/{name}/versions" + ("" if number is None else f"/{number}")

    def _alias_path(self, name: str) -> str:
        return f"{self.root}/{name}/{ALIASES}"

    def _numbers(self, name: str) -> list[int]:
        """Every taken version number, complete or not."""
        try:
            entries = self.fs.ls(self._dir(name), detail=False)
        except FileNotFoundError:
            return []
        return sorted(int(base) for base in (e.rstrip("/").rsplit("/", 1)[-1] for e in entries) if base.isdigit())

    def _complete(self, name: str) -> list[int]:
        manifests = self.fs.glob(f"{self._dir(name)}/*/{MANIFEST}")
        return sorted(int(base) for base in (p.rsplit("/", 2)[-2] for p in manifests) if base.isdigit())

    def _read(self, name: str, number: int, aliases: dict[str, int]) -> ModelVersion:
        folder = self._dir(name, number)
        version = ModelVersion.model_validate_json(self.fs.cat_file(f"{folder}/{MANIFEST}"))
        return version.model_copy(update={
            "aliases": sorted(a for a, n in aliases.items() if n == number),
            "artifact_uri": self.fs.unstrip_protocol(f"{folder}/{ARTIFACT}"),  # where it is now
        })

    def _aliases(self, name: str) -> dict[str, int]:
        try:
            return json.loads(self.fs.cat_file(self._alias_path(name)))
        except FileNotFoundError:
            return {}

    def _claim(self, name: str) -> int:
        """Take the next free version number by creating its claim file exclusively."""
        token = json.dumps({"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                            "at": datetime.now(UTC).isoformat()}).encode()
        for _ in range(CLAIM_ATTEMPTS):
            with self._lock(name):
                number = max(self._numbers(name), default=0) + 1
                path = f"{self._dir(name, number)}/{CLAIM}"
                self.fs.makedirs(self._dir(name, number), exist_ok=True)
                try:
                    self.fs.pipe_file(path, token, mode="create")
                except FileExistsError:
                    continue
                if self.fs.cat_file(path) == token:  # another writer may have overwritten a non-exclusive create
                    return number
        raise RegistryError(f"could not claim a version number for model {name!r} in {self.uri} "
                            f"after {CLAIM_ATTEMPTS} attempts: too many concurrent writers")

    def _lock(self, name: str) -> contextlib.AbstractContextManager:
        if not self.local:
            return contextlib.nullcontext()
        self.fs.makedirs(f"{self.root}/{name}", exist_ok=True)
        return FileLock(f"{self.root}/{name}/.lock", timeout=LOCK_TIMEOUT_S)

    def _write(self, path: str, data: bytes) -> None:
        artifacts.write_object(self.fs, path, data)
