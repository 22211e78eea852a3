"""Model artifacts on disk: written atomically with their sha256, never unpickled unverified.

A pickle runs code when it is loaded, so an artifact is only loaded after its bytes match
the digest recorded when it was written (in a registry manifest, or in the metadata of a
Kubeflow artifact). A mismatch raises `ArtifactIntegrityError` and nothing is unpickled.
The sha256 catches corruption, not tampering: a registered version is also signed, and its
signature checked first (`modelcycle.signing`).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import joblib


class ArtifactIntegrityError(RuntimeError):
    """The artifact's bytes do not match the recorded sha256; it was not loaded."""


def dumps(obj: object) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer, compress=3)
    return buffer.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_object(fs, path: str, data: bytes) -> None:
    """Write `data` at `path` of the fsspec filesystem `fs`, all at once: on a local disk by
    `write_atomic`, on an object store by a single whole-object write, which readers see
    entirely or not at all."""
    if _is_local(fs):
        write_atomic(path, data)
    else:
        fs.pipe_file(path, data)


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def save(obj: object, path: str | os.PathLike) -> tuple[str, int]:
    """Pickle `obj` to `path`; return its sha256 and size in bytes."""
    data = dumps(obj)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest(), len(data)


def loads(data: bytes, *, sha256: str, what: str = "artifact") -> object:
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise ArtifactIntegrityError(
            f"{what}: sha256 mismatch, expected {sha256}, found {found}; refusing to unpickle it"
        )
    return joblib.load(io.BytesIO(data))


def load(path: str | os.PathLike, *, sha256: str) -> object:
    """Load the artifact at `path` after checking its bytes against `sha256`."""
    return loads(Path(path).read_bytes(), sha256=sha256, what=str(path))
