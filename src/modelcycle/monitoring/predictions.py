"""The prediction log records every request the gateway served, with both models' answers.

The log is a directory of append-only JSON Lines *segments*. The writer holds one segment
open and starts a new one when the open segment reaches `max_segment_bytes` or becomes
`max_segment_age_s` old. A segment is never reopened: a restarted writer starts a new one.
Readers may read the directory at any time, including the segment being written. Only
newline-terminated lines count; an unterminated tail is a write in progress or torn by a
crash, and is skipped.

Each line is one entry, told apart by ``type``:

``request``
    Written as soon as production has answered::

        {"type": "request", "request_id": "9f1c...", "client_request_id": "order-77",
         "ts": 1764000000.123, "records": [{"amount": 12.5, ...}],
         "production": {"model": "fraud", "version": "3", "predictions": [0],
                        "probabilities": [{"0": 0.9, "1": 0.1}], "latency_ms": 1.8,
                        "status": 200, "error": null},
         "mirrored": true, "shadow": null, "shadow_reason": "pending"}

    ``request_id`` is minted by the gateway for every request and is the key that joins
    the entries: a client cannot choose it, reuse it or overwrite another request's entries.
    ``client_request_id`` is the ``X-Request-ID`` the client sent, kept for correlation
    (null when it sent none). ``mirrored`` says whether the request fell in the mirror
    sample. When the shadow's fate is already known (not sampled, mirror dropped because the
    queue was full, no shadow configured) it is given here in ``shadow_reason``; otherwise
    the reason is ``"pending"`` and a ``shadow`` entry follows.
``shadow``
    Written when the shadow call finished, failed or timed out, or when the gateway shut
    down before sending it::

        {"type": "shadow", "request_id": "9f1c...", "ts": ..., "shadow": {... same keys
         as "production" ...}, "shadow_reason": null}

    A shadow call that got no HTTP answer (timeout, connection refused) is still a
    ``shadow`` object, with ``status`` null, the cause in ``error`` and the time waited in
    ``latency_ms``; ``shadow`` is null only when no call was made, with the reason.
``feedback``
    The true label, sent after the fact::

        {"type": "feedback", "request_id": "9f1c...", "ts": ..., "label": 1, "row": null}

    ``row`` null labels every row of the request (the usual single-record case); a number
    labels that row of a batch. The latest feedback for a row wins. ``request_id`` is the
    gateway's id of the request; an id that names no request is taken as a client's id and
    labels the latest request that carried it.

Two entries per mirrored request, rather than one written when the shadow is done, keep the
production side readable at once and keep pending requests out of the gateway's memory.
`read_prediction_log` joins them, and the feedback, into one row per prediction.

Durability policy. Entries are buffered in memory and a background thread writes and
fsyncs them every `flush_interval_s` (sooner when `max_buffered_entries` wait). A crash or
SIGKILL therefore loses at most the entries of the last flush interval, plus the shadow
answers still in flight (their requests read back with ``shadow_reason == "pending"``).
`PredictionLogWriter.close` writes and fsyncs everything, so a clean shutdown (the gateway's
SIGTERM handler) loses nothing.

Retention. The log lives on a small volume (the gateway pod's emptyDir), so the writer
deletes whole segments, oldest first, once they are older than `retain_age_s` or once the
log holds more than `retain_bytes`; the open segment is never deleted. What it deleted is
counted in `PredictionLogWriter.stats`.

A full disk. When a write fails (disk full) the entries it did not write whole stay
buffered and are retried in a fresh segment at the next flush (the failed segment may end
in a torn line, which readers skip); the ones written whole are not written again, so no
entry appears twice. Should one appear twice all the same, readers keep the first. Until a write succeeds again the
writer sheds ``shadow`` entries (the evidence of a mirror, never of a production answer),
and the buffer never holds more than `max_buffered_bytes`: past it new entries are dropped.
Every dropped entry is counted in `PredictionLogWriter.stats`, by type and reason. Nothing
of this reaches the request path: `write_*` never blocks on the disk and never fails for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, TypedDict

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "LogFormatError",
    "PredictionLogReader",
    "PredictionLogSettings",
    "PredictionLogStats",
    "PredictionLogTail",
    "PredictionLogWriter",
    "UpstreamAnswer",
    "iter_log_entries",
    "read_prediction_log",
    "segment_paths",
]

logger = logging.getLogger(__name__)

SEGMENT_PREFIX = "predictions-"
SEGMENT_SUFFIX = ".jsonl"


class LogFormatError(ValueError):
    """A complete line in a segment is not a log entry: the log was edited or damaged."""


class UpstreamAnswer(TypedDict):
    """What one model server (production or shadow) answered to one request."""

    model: str | None
    version: str | None
    predictions: list[Any] | None
    probabilities: list[dict[str, float]] | None
    latency_ms: float
    status: int | None
    """HTTP status, or None when no HTTP answer came (timeout, connection failure)."""
    error: str | None


class PredictionLogSettings(BaseModel):
    """How the prediction log rotates its segments and how long entries wait in memory."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_segment_bytes: Annotated[int, Field(gt=0)] = 64 * 2**20
    """Bytes after which a new segment starts. 64 MiB keeps a segment quick to read whole."""
    max_segment_age_s: Annotated[float, Field(gt=0)] = 3600.0
    """Seconds after which a new segment starts, so that old hours can be shipped or expired."""
    flush_interval_s: Annotated[float, Field(gt=0)] = 1.0
    """Longest time in seconds an entry waits in memory before it is written and fsynced: the
    most a crash can lose. One fsync a second costs nothing measurable on the request path."""
    max_buffered_entries: Annotated[int, Field(gt=0)] = 10_000
    """Entries that trigger a flush before the interval is up, bounding memory under load."""
    max_buffered_bytes: Annotated[int, Field(gt=0)] = 64 * 2**20
    """Most bytes of encoded entries held in memory while the disk refuses them (disk full);
    past it new entries are dropped and counted. 64 MiB is one large batch request."""
    retain_bytes: Annotated[int, Field(gt=0)] = 512 * 2**20
    """Bytes of segments kept; past it the oldest segments are deleted. 512 MiB leaves half of
    the gateway pod's 1 GiB emptyDir free, room for a segment being written and the rest."""
    retain_age_s: Annotated[float, Field(gt=0)] = 7 * 86400.0
    """Seconds since its last write after which a segment is deleted: seven days of evidence
    for a shadow comparison or a drift check, which look at days, not months."""
    retention_check_interval_s: Annotated[float, Field(gt=0)] = 60.0
    """Longest time in seconds between two retention checks; one also follows each new
    segment and each failed write."""


@dataclasses.dataclass
class PredictionLogStats:
    """What the writer had to throw away, since it started; the gateway exports it in /metrics."""

    segments_deleted: int = 0
    """Segments deleted by retention."""
    bytes_deleted: int = 0
    """Bytes of the segments deleted by retention."""
    entries_dropped: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    """Entries never written, by (entry type, reason): ``disk_full`` for a shadow entry shed
    while writes fail, ``buffer_full`` for any entry past `max_buffered_bytes`."""


class PredictionLogWriter:
    """Appends entries to the prediction log in `log_dir`; thread-safe, never blocks on disk.

    The `write_*` methods encode the entry and put it in a memory buffer; a daemon thread
    writes and fsyncs the buffer every `settings.flush_interval_s`. Call `close` (or use the
    writer as a context manager) to write everything before the process ends.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        settings: PredictionLogSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings or PredictionLogSettings()
        self._clock = clock
        self._writer_id = uuid.uuid4().hex[:8]
        self._sequence = 0
        self._buffer: list[tuple[str, bytes]] = []
        """Entries waiting for the disk, as (type, encoded line)."""
        self._buffered_bytes = 0
        self._buffer_lock = threading.Lock()
        self._disk_full = False
        self.stats = PredictionLogStats()
        self._path: Path | None = None
        self._expired_at = float("-inf")
        self._io_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._closed = False
        self._fd: int | None = None
        self._segment_opened_at = 0.0
        self._segment_bytes = 0
        self._segment_broken = False
        self._lines_written = 0
        """Lines of the flush under way written whole so far."""
        self._flusher = threading.Thread(
            target=self._flush_periodically, name="prediction-log-flusher", daemon=True
        )
        self._flusher.start()

    def write_request(
        self,
        *,
        request_id: str,
        records: list[dict[str, Any]] | None,
        production: UpstreamAnswer,
        mirrored: bool,
        shadow: UpstreamAnswer | None = None,
        shadow_reason: str | None = None,
        client_request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Log a request with production's answer; `shadow_reason="pending"` if a shadow
        entry will follow."""
        self._append(
            {
                "type": "request",
                "request_id": request_id,
                "client_request_id": client_request_id,
                "ts": self._clock() if ts is None else ts,
                "records": records,
                "production": production,
                "mirrored": mirrored,
                "shadow": shadow,
                "shadow_reason": shadow_reason,
            }
        )

    def write_shadow(
        self,
        *,
        request_id: str,
        shadow: UpstreamAnswer | None,
        shadow_reason: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Log the shadow's answer to a mirrored request, or the reason there is none."""
        self._append(
            {
                "type": "shadow",
                "request_id": request_id,
                "ts": self._clock() if ts is None else ts,
                "shadow": shadow,
                "shadow_reason": shadow_reason,
            }
        )

    def write_feedback(
        self, *, request_id: str, label: Any, row: int | None = None, ts: float | None = None
    ) -> None:
        """Log the true label of a request (every row), or of one row of a batch."""
        self._append(
            {
                "type": "feedback",
                "request_id": request_id,
                "ts": self._clock() if ts is None else ts,
                "label": label,
                "row": row,
            }
        )

    def flush(self) -> None:
        """Write and fsync every buffered entry now, then apply retention when it is due.
        Raises the `OSError` of a failed write, after keeping what fits back in the buffer."""
        with self._io_lock:
            with self._buffer_lock:
                entries, self._buffer, self._buffered_bytes = self._buffer, [], 0
            self._lines_written = 0
            try:
                if entries:
                    self._write_lines([line for _, line in entries])
            except OSError:
                self._keep_unwritten(entries[self._lines_written:])
                self._expire_segments()
                raise
            with self._buffer_lock:
                self._disk_full = False
            if time.monotonic() - self._expired_at >= self.settings.retention_check_interval_s:
                self._expire_segments()

    def _keep_unwritten(self, entries: list[tuple[str, bytes]]) -> None:
        """Put the entries a failed write did not write whole back in front of the buffer,
        minus shadow entries and whatever does not fit, counted."""
        if self._segment_bytes:
            # The segment may end in a torn line: go on in a new one, so that the torn line
            # stays an unterminated last line, which readers skip.
            self._segment_broken = True
        with self._buffer_lock:
            self._disk_full = True
            kept = []
            for kind, line in entries:
                if kind == "shadow":
                    self._count_drop(kind, "disk_full")
                else:
                    kept.append((kind, line))
            self._buffer[:0] = kept
            self._buffered_bytes += sum(len(line) for _, line in kept)
            while self._buffered_bytes > self.settings.max_buffered_bytes:
                kind, line = self._buffer.pop(0)
                self._buffered_bytes -= len(line)
                self._count_drop(kind, "buffer_full")

    def _count_drop(self, kind: str, reason: str) -> None:
        dropped = self.stats.entries_dropped
        dropped[kind, reason] = dropped.get((kind, reason), 0) + 1

    def _expire_segments(self) -> None:
        """Delete whole segments, oldest first, past the retention's age or size; never the
        open one. Called with the I/O lock held."""
        self._expired_at = time.monotonic()
        now = time.time()
        sizes: list[tuple[Path, int]] = []
        for path in segment_paths(self.log_dir):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path != self._path and now - stat.st_mtime > self.settings.retain_age_s:
                self._delete_segment(path, stat.st_size)
            else:
                sizes.append((path, stat.st_size))
        total = sum(size for _, size in sizes)
        for path, size in sizes:
            if total <= self.settings.retain_bytes:
                break
            if path != self._path:
                self._delete_segment(path, size)
                total -= size

    def _delete_segment(self, path: Path, size: int) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        self.stats.segments_deleted += 1
        self.stats.bytes_deleted += size
        logger.info("prediction log retention deleted %s (%d bytes)", path.name, size)

    def close(self) -> None:
        """Write and fsync everything, then close the open segment. Idempotent."""
        if self._closed:
            return
        with self._buffer_lock:
            self._closing = True
        self._wake.set()
        self._flusher.join()
        self.flush()
        with self._io_lock:
            self._close_segment()
        self._closed = True

    def __enter__(self) -> PredictionLogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _append(self, entry: dict[str, Any]) -> None:
        kind = entry["type"]
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        with self._buffer_lock:
            if self._closing:
                raise RuntimeError(f"the prediction log writer for {self.log_dir} is closed")
            if self._disk_full and kind == "shadow":
                self._count_drop(kind, "disk_full")
                return
            if self._buffered_bytes + len(line) > self.settings.max_buffered_bytes:
                self._count_drop(kind, "buffer_full")
                return
            self._buffer.append((kind, line))
            self._buffered_bytes += len(line)
            full = len(self._buffer) >= self.settings.max_buffered_entries
        if full:
            self._wake.set()

    def _flush_periodically(self) -> None:
        while True:
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()
            if self._closing:
                return
            try:
                self.flush()
            except OSError:
                logger.exception("cannot write the prediction log in %s; will retry", self.log_dir)

    def _write_lines(self, lines: list[bytes]) -> None:
        """Write lines in order, rotating so that no segment grows past the size limit
        (unless a single line is larger), then fsync the open segment."""
        limit = self.settings.max_segment_bytes
        chunk: list[bytes] = []
        chunk_bytes = 0
        for line in lines:
            if self._fd is not None and self._segment_needs_rotation(pending=chunk_bytes, line=len(line)):
                self._write_chunk(chunk)
                chunk, chunk_bytes = [], 0
                self._close_segment()
            if self._fd is None:
                self._open_segment()
            chunk.append(line)
            chunk_bytes += len(line)
            if chunk_bytes >= limit:
                self._write_chunk(chunk)
                chunk, chunk_bytes = [], 0
        self._write_chunk(chunk)
        if self._fd is not None:
            os.fsync(self._fd)

    def _segment_needs_rotation(self, *, pending: int, line: int) -> bool:
        """Whether `line` more bytes must go to a new segment, given `pending` bytes already
        bound for the open one."""
        if self._segment_broken:
            return True
        if self._clock() - self._segment_opened_at >= self.settings.max_segment_age_s:
            return True
        used = self._segment_bytes + pending
        return used > 0 and used + line > self.settings.max_segment_bytes

    def _write_chunk(self, chunk: list[bytes]) -> None:
        """Write lines to the open segment, counting in `_lines_written` those written whole,
        also when a write fails part way: only the others are written again, so that no
        entry appears twice in the log."""
        if not chunk:
            return
        assert self._fd is not None
        data = memoryview(b"".join(chunk))
        done = 0
        try:
            while done < len(data):
                written = os.write(self._fd, data[done:])
                self._segment_bytes += written
                done += written
        finally:
            self._lines_written += sum(1 for end in itertools.accumulate(map(len, chunk)) if end <= done)

    def _open_segment(self) -> None:
        now = self._clock()
        self._sequence += 1
        stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{SEGMENT_PREFIX}{stamp}-{self._writer_id}-{self._sequence:06d}{SEGMENT_SUFFIX}"
        self._fd = os.open(self.log_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._path = self.log_dir / name
        self._expired_at = float("-inf")  # a new segment grows the log: check retention next flush
        self._segment_opened_at = now
        self._segment_bytes = 0
        self._segment_broken = False
        # The new name must survive a crash too, not only the bytes written into it.
        dir_fd = os.open(self.log_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _close_segment(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        self._path = None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def segment_paths(log_dir: str | os.PathLike[str]) -> list[Path]:
    """The log's segment files, oldest first (names start with the UTC time they opened)."""
    return sorted(Path(log_dir).glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))


def iter_log_entries(log_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every complete entry of every segment, in write order within a segment.

    An unterminated last line is skipped (being written, or torn by a crash), and so is a
    terminated last line that does not parse (a torn write the OS padded). Any other line
    that does not parse raises `LogFormatError` naming the file and line.
    """
    for _, entry in PredictionLogTail(log_dir).entries():
        yield entry


class PredictionLogTail:
    """Follows the log's segments: each `entries` call yields what was appended since the last.

    Segments are read in blocks, never whole, so following a log costs memory for one block
    and the longest line, whatever the size of the segments. Each segment is read from where
    the last call stopped, after the last complete line, so a line being written is picked
    up whole by a later call.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.log_dir = Path(log_dir)
        self._read: dict[Path, tuple[int, int]] = {}
        """Per segment: bytes consumed and lines consumed."""

    def consumed(self, segment: str | os.PathLike[str]) -> int:
        """Bytes of `segment` read so far."""
        return self._read.get(Path(segment), (0, 0))[0]

    def vanished(self) -> list[Path]:
        """Segments read before and deleted since (by retention), now forgotten."""
        present = set(segment_paths(self.log_dir))
        gone = [path for path in self._read if path not in present]
        for path in gone:
            del self._read[path]
        return gone

    def entries(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """(segment, entry) for every complete entry appended since the last call, oldest
        segment first. A `LogFormatError` leaves the damaged line unread: it is raised again."""
        for path in segment_paths(self.log_dir):
            offset, lines = self._read.get(path, (0, 0))
            try:
                segment = open(path, "rb")
            except FileNotFoundError:  # expired and removed since it was listed
                self._read.pop(path, None)
                continue
            with segment:
                segment.seek(offset)
                for entry, size in _complete_lines(path, segment, first_line=lines + 1):
                    offset, lines = offset + size, lines + 1
                    self._read[path] = (offset, lines)
                    if entry is not None:
                        yield path, entry


_BLOCK_BYTES = 2**20
"""How much of a segment is read at a time."""


def _complete_lines(path: Path, stream: BinaryIO, *, first_line: int) -> Iterator[tuple[dict[str, Any] | None, int]]:
    """(entry, bytes with its newline) of each complete line from the stream's position; the
    entry is None for a blank line and for a last line that does not parse (skipped)."""
    pieces: list[bytes] = []
    held: bytes | None = None
    number = first_line - 1
    while block := stream.read(_BLOCK_BYTES):
        cut = block.rfind(b"\n")
        if cut < 0:
            pieces.append(block)
            continue
        pieces.append(block[:cut])
        data, pieces = b"".join(pieces), [block[cut + 1:]]
        for line in data.split(b"\n"):
            if held is not None:
                number += 1
                yield _entry(path, held, number, last=False), len(held) + 1
            held = line
    if held is not None:
        yield _entry(path, held, number + 1, last=True), len(held) + 1


def _entry(path: Path, line: bytes, number: int, *, last: bool) -> dict[str, Any] | None:
    """The entry in one complete line, read from `path` at line `number`."""
    if not line.strip():
        return None
    try:
        entry = json.loads(line)
    except ValueError as exc:
        if last:
            logger.warning("skipping a torn last line in %s", path)
            return None
        raise LogFormatError(f"{path}:{number}: expected a JSON log entry, found {line[:80]!r} ({exc})") from exc
    if not isinstance(entry, dict) or entry.get("type") not in ("request", "shadow", "feedback"):
        raise LogFormatError(
            f"{path}:{number}: expected an object with type request, shadow or feedback, "
            f"found {line[:80]!r}"
        )
    return entry


COLUMNS = [
    "request_id",
    "client_request_id",
    "row",
    "ts",
    "record",
    "production_model",
    "production_version",
    "production_prediction",
    "production_probabilities",
    "production_latency_ms",
    "production_status",
    "production_error",
    "mirrored",
    "shadow_model",
    "shadow_version",
    "shadow_prediction",
    "shadow_probabilities",
    "shadow_latency_ms",
    "shadow_status",
    "shadow_error",
    "shadow_reason",
    "label",
    "label_ts",
]
"""Columns of `read_prediction_log`. Latencies, statuses and errors belong to the request and
repeat on each of its rows; use ``df.drop_duplicates("request_id")`` for per-request figures."""

def read_prediction_log(log_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The whole log as one row per prediction, with the shadow's answer and the label joined.

    A batch request of n records gives n rows (``row`` 0..n-1); a request with no prediction
    (an error) gives one row per input record, or one row. A shadow that has not answered yet
    shows ``shadow_reason == "pending"``. ``ts`` and ``label_ts`` are UTC timestamps.
    """
    return PredictionLogReader(log_dir).refresh().frame()


class PredictionLogReader:
    """Follows a prediction log: each `refresh` parses only what was appended since the last.

    For a process that looks at a growing log again and again (the monitoring worker): the
    files are read by a `PredictionLogTail`. The joined entries stay in memory, also after
    retention deleted their segment, until `forget`: with a seven-field record, 100,000
    requests took about 700 MB of RSS to follow. The shadow comparison does not use it: it
    keeps a few numbers per request (`modelcycle.monitoring.shadow.ShadowEvidenceReader`).
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, keep_records: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.keep_records = keep_records
        """False leaves the ``record`` column empty: the input features are most of an
        entry's memory."""
        self.tail = PredictionLogTail(log_dir)
        self._requests: dict[str, dict[str, Any]] = {}
        self._shadows: dict[str, dict[str, Any]] = {}
        self._labels: dict[tuple[str, int | None], tuple[float, Any]] = {}
        self._latest_for_client: dict[str, str] = {}
        """The gateway's id of the latest request that carried each client id: what feedback
        addressed by a client's id labels."""

    def refresh(self) -> PredictionLogReader:
        """Parse the complete lines appended to every segment since the last refresh."""
        for _, entry in self.tail.entries():
            self._add(entry)
        return self

    def forget(self, request_ids: set[str]) -> None:
        """Drop these requests, their shadow answers and their labels from memory."""
        clients = {self._requests[request_id].get("client_request_id") for request_id in request_ids
                   if request_id in self._requests}
        for request_id in request_ids:
            self._requests.pop(request_id, None)
            self._shadows.pop(request_id, None)
        for client_id in clients:
            if self._latest_for_client.get(client_id) in request_ids:
                del self._latest_for_client[client_id]
        orphaned = {client_id for client_id in clients if client_id not in self._latest_for_client}
        self._labels = {key: value for key, value in self._labels.items()
                        if key[0] not in request_ids and key[0] not in orphaned}

    def frame(self) -> pd.DataFrame:
        """Everything read so far, as `read_prediction_log` describes."""
        # Imported here: the gateway writes the log on its request path and should start
        # without paying for pandas.
        import pandas as pd

        requests, shadows, labels = self._requests, self._shadows, self._labels
        columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for request_id, entry in requests.items():
            production = entry.get("production") or {}
            shadow_entry = shadows.get(request_id, entry)
            shadow = shadow_entry.get("shadow") or {}
            predictions = production.get("predictions")
            records = entry.get("records")
            count = len(predictions) if isinstance(predictions, list) and predictions else (
                len(records) if isinstance(records, list) and records else 1
            )
            client_id = entry.get("client_request_id")
            # A client's id that is also a gateway's id addresses that request only.
            by_client = (client_id is not None and client_id not in requests
                         and self._latest_for_client.get(client_id) == request_id)
            for row in range(count):
                labelled = labels.get((request_id, row)) or labels.get((request_id, None))
                if labelled is None and by_client:
                    labelled = labels.get((client_id, row)) or labels.get((client_id, None))
                values = {
                    "request_id": request_id,
                    "client_request_id": client_id,
                    "row": row,
                    "ts": entry["ts"],
                    "record": _nth(records, row),
                    "mirrored": bool(entry.get("mirrored")),
                    "shadow_reason": shadow_entry.get("shadow_reason"),
                    "label": labelled[1] if labelled else None,
                    "label_ts": labelled[0] if labelled else None,
                }
                for side, answer in (("production", production), ("shadow", shadow)):
                    values[f"{side}_model"] = answer.get("model")
                    values[f"{side}_version"] = answer.get("version")
                    values[f"{side}_prediction"] = _nth(answer.get("predictions"), row)
                    values[f"{side}_probabilities"] = _nth(answer.get("probabilities"), row)
                    values[f"{side}_latency_ms"] = answer.get("latency_ms")
                    values[f"{side}_status"] = answer.get("status")
                    values[f"{side}_error"] = answer.get("error")
                for name in COLUMNS:
                    columns[name].append(values[name])
        frame = pd.DataFrame({name: pd.Series(columns[name], dtype=_DTYPES.get(name, object)) for name in COLUMNS})
        for name in ("ts", "label_ts"):
            frame[name] = pd.to_datetime(frame[name], unit="s", utc=True)
        return frame

    def _add(self, entry: dict[str, Any]) -> None:
        kind = entry["type"]
        if kind == "request":
            if entry["request_id"] in self._requests:  # written again by a retried write: keep the first
                return
            if not self.keep_records:
                entry["records"] = None
            self._requests[entry["request_id"]] = entry
            client_id = entry.get("client_request_id")
            if client_id is not None:
                latest = self._requests.get(self._latest_for_client.get(client_id, ""))
                if latest is None or entry["ts"] >= latest["ts"]:
                    self._latest_for_client[client_id] = entry["request_id"]
        elif kind == "shadow":
            self._shadows.setdefault(entry["request_id"], entry)
        else:
            key = (entry["request_id"], entry.get("row"))
            if key not in self._labels or entry["ts"] >= self._labels[key][0]:
                self._labels[key] = (entry["ts"], entry["label"])


_DTYPES = {
    "row": "int64",
    "ts": "float64",
    "label_ts": "float64",
    "mirrored": "bool",
    "production_latency_ms": "float64",
    "shadow_latency_ms": "float64",
    "production_status": "Int64",
    "shadow_status": "Int64",
}
"""Column types of `read_prediction_log`; the others stay Python objects (labels and
predictions keep their JSON type)."""


def _nth(values: Any, index: int) -> Any:
    return values[index] if isinstance(values, list) and index < len(values) else None
