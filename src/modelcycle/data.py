"""Data versions: every training run reads an immutable, content-addressed snapshot.

Ingest reads the spec's source (a file or fsspec URL in CSV, Parquet or JSON lines, or a
SQL query through SQLAlchemy) and writes it to the data store as Parquet next to a
manifest: the source, row count, column types, the Parquet file's sha256, creation time
and the parent version (the one ingested before from the same source).

The version id is a digest of the content (column names, types and values), not of the
file's bytes, so the same input gives the same id whatever wrote it, and ingesting it
again is a no-op. A snapshot appears by an atomic rename of a complete folder, so readers
never see a half-written one. `lineage.jsonl` records every ingest, in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pandas as pd
from filelock import FileLock
from pydantic import BaseModel

from modelcycle.spec import DataSpec, SqlSource

DEFAULT_STORE = Path(".modelcycle") / "data"


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
        return f"sql:{source.url} :: {source.query}"
    return source


def read_source(spec: DataSpec, *, base_dir: Path | None = None) -> pd.DataFrame:
    """Read the data the spec points at; relative paths are taken from `base_dir`."""
    source = spec.source
    if isinstance(source, SqlSource):
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(source.url)
            with engine.connect() as conn:
                return pd.read_sql(sqlalchemy.text(source.query), conn)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise DataError(f"data.source: the SQL query failed on {source.url}: {exc.__class__.__name__}: {exc}") from None
    if "://" not in source and base_dir is not None and not Path(source).is_absolute():
        source = str(base_dir / source)
    fmt = spec.format
    if fmt == "auto":
        name = source.lower().removesuffix(".gz")
        fmt = "parquet" if name.endswith((".parquet", ".pq")) else "jsonl" if name.endswith((".jsonl", ".json")) else "csv"
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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DataStore:
    """Content-addressed snapshots in a local folder, `<root>/<id>/{data.parquet,manifest.json}`."""

    def __init__(self, root: str | os.PathLike = DEFAULT_STORE):
        self.root = Path(root)

    def _lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".lock"))

    def snapshot(self, frame: pd.DataFrame, *, source: str) -> DataVersion:
        """Store `frame` unless the same content is stored already; return its version."""
        version_id = content_id(frame)
        final = self.root / version_id
        with self._lock():
            if (final / "manifest.json").exists():
                version = self.get(version_id)
            else:
                parent = self._latest_for(source)
                tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
                try:
                    frame.to_parquet(tmp / "data.parquet", index=False)
                    version = DataVersion(
                        id=version_id,
                        source=source,
                        rows=len(frame),
                        columns={str(c): str(t) for c, t in frame.dtypes.items()},
                        sha256=_sha256_file(tmp / "data.parquet"),
                        created_at=datetime.now(UTC),
                        parent=parent if parent != version_id else None,
                        path=str(final),
                    )
                    (tmp / "manifest.json").write_text(version.model_dump_json(indent=2))
                    if final.exists():  # a folder left without manifest by a crash
                        shutil.rmtree(final)
                    os.rename(tmp, final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            with open(self.root / "lineage.jsonl", "a") as fh:
                fh.write(json.dumps({"id": version.id, "source": source, "at": datetime.now(UTC).isoformat()}) + "\n")
        return version

    def _latest_for(self, source: str) -> str | None:
        path = self.root / "lineage.jsonl"
        if not path.exists():
            return None
        latest = None
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["source"] == source:
                latest = entry["id"]
        return latest

    def resolve(self, ref: str) -> str:
        """A full id from a full id or a unique prefix of at least 6 characters."""
        if (self.root / ref / "manifest.json").exists():
            return ref
        matches = [p.name for p in self.root.glob(f"{ref}*") if (p / "manifest.json").exists()] if len(ref) >= 6 else []
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(v.short_id for v in self.versions()) or "none"
        raise DataError(f"data version {ref!r}: {'ambiguous' if matches else 'not found'} in {self.root} (known: {known})")

    def get(self, ref: str) -> DataVersion:
        return DataVersion.model_validate_json((self.root / self.resolve(ref) / "manifest.json").read_text())

    def load(self, ref: str, *, verify: bool = True) -> pd.DataFrame:
        version = self.get(ref)
        path = Path(version.path)
        if not path.exists():  # the store was moved: trust the folder it is in now
            path = self.root / version.id
        data = path / "data.parquet"
        if verify and (found := _sha256_file(data)) != version.sha256:
            raise DataError(f"data version {version.short_id}: {data} has sha256 {found}, manifest says {version.sha256}")
        return pd.read_parquet(data)

    def attach(self, ref: str, name: str, text: str) -> None:
        """Store a small document (the validation schema, say) with a version; replaced atomically."""
        folder = self.root / self.resolve(ref)
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / name)

    def attachment(self, ref: str, name: str) -> str | None:
        path = self.root / self.resolve(ref) / name
        return path.read_text() if path.exists() else None

    def versions(self) -> list[DataVersion]:
        found = [DataVersion.model_validate_json(p.read_text()) for p in self.root.glob("*/manifest.json")]
        return sorted(found, key=lambda v: v.created_at)


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
