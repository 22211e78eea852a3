"""Data versions: every training run reads an immutable, content-addressed snapshot.

Ingest reads the spec's source (a file or fsspec URL in CSV, Parquet or JSON lines, or a
SQL query through SQLAlchemy) and writes it to the data store as Parquet next to a
manifest: the source, row count, column types, the Parquet file's sha256, creation time
and the parent version (the one ingested before from the same source).

The version id is a digest of the content (column names, types and values), not of the
file's bytes, so the same input gives the same id whatever wrote it, and ingesting it
again is a no-op. The store is a folder or any fsspec URL (`DataStore`); readers never see
a half-written snapshot, and a lineage record is kept for every ingest, in order.

A version whose data fails validation stays in the store, marked invalid: `invalid.json`
next to it holds the validation report, `load` refuses it, and validation looks past it
for the schema to check the next version against. It is kept rather than removed because
its id is on record (in the store's lineage, as the parent of the next ingest, perhaps in a
registered model's lineage, if it passed under an earlier spec), and because the report
says what was wrong with it. Ingesting the same content again gives the same version; it
is validated again, and passing clears the mark.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pandas as pd
from filelock import FileLock
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel

from modelcycle import artifacts

from modelcycle.spec import DataSpec, SqlSource

DEFAULT_STORE = Path(".modelcycle") / "data"
DATA_FILE = "data.parquet"
MANIFEST = "manifest.json"
VERSION_REF = re.compile(r"[0-9a-f]{6,64}")
"""A version id (a sha256) or a prefix of one: nothing that could name another folder or glob."""
ATTACHMENT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
#: Written next to a version that failed validation: the validation report, as JSON.
INVALID_FILE = "invalid.json"


class DataError(ValueError):
    """The data cannot be read or does not hold what the spec says."""


class DataVersion(BaseModel):
    id: str
    source: str
    rows: int
    columns: dict[str, str]
    sha256: str
    created_at: datetime
    parent: str | None = None
    path: str

    @property
    def short_id(self) -> str:
        return self.id[:12]


def describe_source(source: str | SqlSource) -> str:
    if isinstance(source, SqlSource):
        return f"sql:{source.url} :: {source.query}"  # the spec refuses a URL with a password
    return source


@contextlib.contextmanager
def sql_connection(source: SqlSource, *, password_field: str = "data.source.password_env",
                   failure_field: str = "data.source") -> Iterator:
    """A connection for `source`'s query, for training's read and batch prediction's chunks.
    The password comes from `password_env` at connect time only, and is scrubbed from any
    error raised inside the block (a driver may echo its connection parameters). The
    `*_field` names say in errors where the value came from (a spec key, a CLI option)."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(source.url)
    password = None
    if source.password_env:
        password = os.environ.get(source.password_env)
        if not password:
            raise DataError(f"{password_field}: the environment variable {source.password_env} is not set "
                            "(set it from a Secret on Kubernetes)")
        url = url.set(password=password)
    try:
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        message = f"{exc.__class__.__name__}: {exc}"
        if password:
            message = message.replace(password, "***")
        raise DataError(f"{failure_field}: the SQL query failed on {source.url}: {message}") from None


def _read_sql(source: SqlSource) -> pd.DataFrame:
    import sqlalchemy

    with sql_connection(source) as conn:
        return pd.read_sql(sqlalchemy.text(source.query), conn)


def resolve_source(spec: DataSpec, *, base_dir: Path | None = None) -> tuple[str, str]:
    """The path or URL of a file source, a relative path taken from `base_dir`, and its format."""
    source = spec.source
    if "://" not in source and base_dir is not None and not Path(source).is_absolute():
        source = str(base_dir / source)
    fmt = spec.format
    if fmt == "auto":
        name = source.lower().removesuffix(".gz")
        fmt = "parquet" if name.endswith((".parquet", ".pq")) else "jsonl" if name.endswith((".jsonl", ".json")) else "csv"
    return source, fmt


def first_data_line(spec: DataSpec, *, rows: int, base_dir: Path | None = None) -> tuple[str, int] | None:
    """The file of a text source and the line its data row 0 is on (2 for a CSV, whose line 1 is
    the header; 1 for JSON lines), when each of its `rows` records is exactly one line, so that
    data row i is on that line + i. None for Parquet and SQL, and when a record spans lines or
    blank lines sit between records (the file then has more lines than header and rows)."""
    if isinstance(spec.source, SqlSource):
        return None
    source, fmt = resolve_source(spec, base_dir=base_dir)
    first = {"csv": 2, "jsonl": 1}.get(fmt)
    if first is None:
        return None
    lines, last = 0, b"\n"
    try:
        with fsspec.open(source, "rb", compression="infer") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                lines, last = lines + block.count(b"\n"), block[-1:]
    except OSError:
        return None
    lines += last != b"\n"  # a last line without a newline
    return (source, first) if lines == first - 1 + rows else None


def read_source(spec: DataSpec, *, base_dir: Path | None = None) -> pd.DataFrame:
    """Read the data the spec points at; relative paths are taken from `base_dir`."""
    source = spec.source
    if isinstance(source, SqlSource):
        return _read_sql(source)
    source, fmt = resolve_source(spec, base_dir=base_dir)
    try:
        with fsspec.open(source, "rb", compression="infer") as fh:
            if fmt == "parquet":
                return pd.read_parquet(fh)
            if fmt == "jsonl":
                return pd.read_json(fh, lines=True)
            return pd.read_csv(fh)
    except FileNotFoundError:
        raise DataError(f"data.source: no file at {source}") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"data.source: cannot read {source} as {fmt}: {exc}") from None


def content_id(frame: pd.DataFrame) -> str:
    """A digest of column names, dtypes and values; independent of file format and row index."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


class DataStore:
    """Content-addressed snapshots in a folder or at any fsspec URL (``s3://bucket/data``)::

        <root>/<id>/data.parquet        the snapshot
        <root>/<id>/manifest.json       its `DataVersion`, written last: a version exists once this does
        <root>/<id>/<attachment>        small documents (the validation schema, invalid.json)
        <root>/lineage/<ns>-<id>.json   one record per ingest, in time order
        <root>/.lock                    local folders only

    On a local disk a snapshot is written into a temporary folder and renamed into place
    under a file lock. On an object store, which has neither, the data is written first and
    the manifest last, each as one whole-object write: a reader sees a complete version or
    none, and two writers of the same content write the same bytes. Lineage is one object
    per ingest rather than an appended file, because objects cannot be appended to.
    """

    def __init__(self, root: str | os.PathLike = DEFAULT_STORE, *, storage_options: dict | None = None):
        self.uri = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"DataStore({self.uri!r})"

    def _lock(self) -> contextlib.AbstractContextManager:
        if not self.local:
            return contextlib.nullcontext()
        self.fs.makedirs(self.root, exist_ok=True)
        return FileLock(f"{self.root}/.lock")

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def snapshot(self, frame: pd.DataFrame, *, source: str) -> DataVersion:
        """Store `frame` unless the same content is stored already; return its version."""
        version_id = content_id(frame)
        final = self._path(version_id)
        with self._lock():
            if self.fs.exists(self._path(version_id, MANIFEST)):
                version = self.get(version_id)
            else:
                parent = self._latest_for(source)
                buffer = io.BytesIO()
                frame.to_parquet(buffer, index=False)
                data = buffer.getvalue()
                version = DataVersion(
                    id=version_id,
                    source=source,
                    rows=len(frame),
                    columns={str(c): str(t) for c, t in frame.dtypes.items()},
                    sha256=hashlib.sha256(data).hexdigest(),
                    created_at=datetime.now(UTC),
                    parent=parent if parent != version_id else None,
                    path=final if self.local else self.fs.unstrip_protocol(final),
                )
                if self.local:
                    self._snapshot_local(final, data, version)
                else:
                    self.fs.pipe_file(self._path(version_id, DATA_FILE), data)
                    self.fs.pipe_file(self._path(version_id, MANIFEST), version.model_dump_json(indent=2).encode())
            record = {"id": version.id, "source": source, "at": datetime.now(UTC).isoformat()}
            artifacts.write_object(self.fs, self._path("lineage", f"{time.time_ns():020d}-{version.id}.json"),
                                   json.dumps(record).encode())
        return version

    def _snapshot_local(self, final: str, data: bytes, version: DataVersion) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            (tmp / DATA_FILE).write_bytes(data)
            (tmp / MANIFEST).write_text(version.model_dump_json(indent=2))
            if Path(final).exists():  # a folder left without manifest by a crash
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def lineage(self) -> list[dict]:
        """Every ingest, oldest first (stores written before lineage objects keep `lineage.jsonl`)."""
        entries = []
        legacy = self._path("lineage.jsonl")
        if self.fs.exists(legacy):
            entries += [json.loads(line) for line in self.fs.cat_file(legacy).decode().splitlines() if line]
        try:
            names = sorted(self.fs.ls(self._path("lineage"), detail=False))
        except FileNotFoundError:
            names = []
        entries += [json.loads(self.fs.cat_file(name)) for name in names if name.endswith(".json")]
        return entries

    def _latest_for(self, source: str) -> str | None:
        latest = None
        for entry in self.lineage():
            if entry["source"] == source:
                latest = entry["id"]
        return latest

    def resolve(self, ref: str) -> str:
        """A full id from a full id or a unique prefix of at least 6 hex characters."""
        if not isinstance(ref, str) or not VERSION_REF.fullmatch(ref):
            raise DataError(f"data version {ref!r}: expected a version id or a prefix of at least 6 of its "
                            "hex characters (0-9, a-f)")
        if self.fs.exists(self._path(ref, MANIFEST)):
            return ref
        matches = [version.id for version in self.versions() if version.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(v.short_id for v in self.versions()) or "none"
        raise DataError(f"data version {ref!r}: {'ambiguous' if matches else 'not found'} in {self.uri} (known: {known})")

    def get(self, ref: str) -> DataVersion:
        return DataVersion.model_validate_json(self.fs.cat_file(self._path(self.resolve(ref), MANIFEST)))

    def load(self, ref: str, *, verify: bool = True, allow_invalid: bool = False) -> pd.DataFrame:
        """The version's data. A version marked invalid is refused, so nothing trains on it;
        `allow_invalid` is for validating it again, or looking at what was wrong."""
        version = self.get(ref)
        if not allow_invalid and self.invalid_report(version.id) is not None:
            raise DataError(f"data version {version.short_id} failed validation and is marked invalid; the report is "
                            f"{self.fs.unstrip_protocol(self._path(version.id, INVALID_FILE))}. "
                            "Fix the source and run again.")
        path = self._path(version.id, DATA_FILE)  # where it is now, wherever it was written
        data = self.fs.cat_file(path)
        if verify and (found := hashlib.sha256(data).hexdigest()) != version.sha256:
            raise DataError(f"data version {version.short_id}: {self.fs.unstrip_protocol(path)} has sha256 {found}, "
                            f"manifest says {version.sha256}")
        return pd.read_parquet(io.BytesIO(data))

    def fetch(self, ref: str, dest: str | os.PathLike) -> DataVersion:
        """Copy a version's Parquet file to the local path `dest`, checked against its sha256
        (how a pipeline task hands the snapshot to the next one as a KFP Dataset)."""
        version = self.get(ref)
        data = self.fs.cat_file(self._path(version.id, DATA_FILE))
        if (found := hashlib.sha256(data).hexdigest()) != version.sha256:
            raise DataError(f"data version {version.short_id}: sha256 {found}, manifest says {version.sha256}")
        artifacts.write_atomic(dest, data)
        return version

    def attach(self, ref: str, name: str, text: str) -> None:
        """Store a small document (the validation schema, say) with a version; replaced atomically."""
        artifacts.write_object(self.fs, self._path(self.resolve(ref), _check_attachment(name)), text.encode())

    def attachment(self, ref: str, name: str) -> str | None:
        path = self._path(self.resolve(ref), _check_attachment(name))
        try:
            return self.fs.cat_file(path).decode()
        except FileNotFoundError:
            return None

    def mark_invalid(self, ref: str, report: str) -> None:
        """Record that the version failed validation, with the report: `load` refuses it from now on."""
        self.attach(ref, INVALID_FILE, report)

    def mark_valid(self, ref: str) -> None:
        """Clear the mark of a version that has passed validation (again)."""
        path = self._path(self.resolve(ref), INVALID_FILE)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def invalid_report(self, ref: str) -> str | None:
        """The validation report of a version marked invalid; None for one that is not."""
        return self.attachment(ref, INVALID_FILE)

    def ancestors(self, ref: str) -> Iterator[DataVersion]:
        """The versions `ref` descends from by `parent`, nearest first."""
        seen = {self.resolve(ref)}
        parent = self.get(ref).parent
        while parent and parent not in seen:
            seen.add(parent)
            version = self.get(parent)
            yield version
            parent = version.parent

    def versions(self) -> list[DataVersion]:
        try:
            manifests = self.fs.glob(self._path("*", MANIFEST))
        except FileNotFoundError:
            manifests = []
        found = [DataVersion.model_validate_json(self.fs.cat_file(path)) for path in manifests]
        return sorted(found, key=lambda v: v.created_at)


def _check_attachment(name: str) -> str:
    if not ATTACHMENT_NAME.fullmatch(name):
        raise DataError(f"attachment name {name!r}: expected letters, digits, '.', '_' or '-', "
                        "not starting with '.' (no folders, no wildcards)")
    return name


def ingest(spec: DataSpec, *, store: DataStore, base_dir: Path | None = None) -> DataVersion:
    """Read the source and snapshot it: the first phase of every run."""
    frame = read_source(spec, base_dir=base_dir)
    missing = [c for c in [spec.target, spec.id_column, spec.time_column] if c and c not in frame.columns]
    if missing:
        raise DataError(
            f"data: column(s) {', '.join(missing)} named in the spec are not in the source "
            f"(found columns: {', '.join(map(str, frame.columns))})"
        )
    return store.snapshot(frame, source=describe_source(spec.source))
