"""The gateway's comparison worker follows the prediction log without keeping it: a few
numbers per request (`ShadowEvidenceReader`), let go when retention deletes a segment,
and the same comparison as reading the whole log."""

from __future__ import annotations

import os
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelcycle.monitoring.predictions import (
    PredictionLogReader,
    PredictionLogSettings,
    PredictionLogWriter,
    UpstreamAnswer,
    iter_log_entries,
    read_prediction_log,
    segment_paths,
)
from modelcycle.monitoring.shadow import ShadowEvidenceReader, compare_evidence, compare_followed_log, compare_shadow

RECORD = {"ts": "2026-01-20T13:21:27", "amount": 40.19, "merchant_category": "grocery", "channel": "online",
          "country": "DE", "customer_age": 64, "account_age_days": 1853, "tx_last_24h": 5,
          "distance_from_home_km": 12.7}
"""The README's fraud record: nine fields, what a request of the example carries."""


def _answer(version: str, positive: float, latency_ms: float = 2.0, status: int = 200) -> UpstreamAnswer:
    return {"model": "fraud", "version": version, "predictions": [int(positive > 0.5)],
            "probabilities": [{"0": 1 - positive, "1": positive}], "latency_ms": latency_ms, "status": status,
            "error": None}


def _same(followed, whole) -> None:
    assert followed.model_dump(exclude={"computed_at"}) == whole.model_dump(exclude={"computed_at"})


def test_entries_in_any_order_and_segment_compare_like_the_whole_log(tmp_path: Path) -> None:
    """Shadow answers in a later segment than their request, before their request, still
    pending, dropped, failed; a regression and a multiclass log too."""
    settings = PredictionLogSettings(max_segment_bytes=2_000)
    with PredictionLogWriter(tmp_path / "binary", settings=settings) as log:
        for n in range(40):
            request = dict(request_id=f"r{n}", records=[RECORD], production=_answer("1", (n % 10) / 10 + 0.05),
                           mirrored=n % 4 != 3, shadow_reason="pending" if n % 4 != 3 else "not sampled")
            shadow = _answer("2", (n % 9) / 9 + 0.01, latency_ms=3.0, status=500 if n % 13 == 0 else 200)
            if n % 4 == 0:  # the shadow answered first
                log.write_shadow(request_id=f"r{n}", shadow=shadow)
                log.write_request(**request)
            elif n % 4 in (1, 2):
                log.write_request(**request)
                if n % 8 != 5:  # else still pending
                    log.write_shadow(request_id=f"r{n}", shadow=shadow if n % 4 == 1 else None,
                                     shadow_reason=None if n % 4 == 1 else "dropped: mirror queue full")
            else:
                log.write_request(**request)
            log.flush()
    assert len(segment_paths(tmp_path / "binary")) > 3
    def regression(version: str, value: float, latency_ms: float) -> UpstreamAnswer:
        return {"model": "m", "version": version, "predictions": [value], "probabilities": None,
                "latency_ms": latency_ms, "status": 200, "error": None}

    def multiclass(version: str, p: float) -> UpstreamAnswer:
        return {"model": "m", "version": version, "predictions": ["a" if p > 0.4 else "b"],
                "probabilities": [{"a": p, "b": 0.9 - p, "c": 0.1}], "latency_ms": 1.0, "status": 200, "error": None}

    with PredictionLogWriter(tmp_path / "regression") as log:
        for n in range(30):
            log.write_request(request_id=f"r{n}", records=None, production=regression("1", 10.0 + n, 1.0 + n % 3),
                              mirrored=True, shadow_reason="pending")
            log.write_shadow(request_id=f"r{n}", shadow=regression("2", 10.5 + n * 1.01, 2.0))
    with PredictionLogWriter(tmp_path / "multiclass") as log:
        for n in range(30):
            log.write_request(request_id=f"r{n}", records=None, production=multiclass("1", 0.3 + n / 100),
                              mirrored=True, shadow_reason="pending")
            log.write_shadow(request_id=f"r{n}", shadow=multiclass("2", 0.35 + n / 100))
    for name in ("binary", "regression", "multiclass"):
        followed = compare_followed_log(tmp_path / name)
        _same(followed, compare_shadow(read_prediction_log(tmp_path / name)))
    assert followed.score_kind == "total_variation"
    binary = compare_followed_log(tmp_path / "binary")
    assert binary.requests == 40 and binary.dropped == 10 and binary.compared_requests > 10


def test_a_segment_deleted_by_retention_leaves_the_comparison_and_the_memory(tmp_path: Path) -> None:
    settings = PredictionLogSettings(max_segment_bytes=20_000, retain_bytes=60_000, retention_check_interval_s=0.001)
    reader = ShadowEvidenceReader(tmp_path)
    with PredictionLogWriter(tmp_path, settings=settings) as log:
        for n in range(400):
            log.write_request(request_id=f"r{n}", records=[RECORD], production=_answer("1", 0.2), mirrored=True,
                              shadow_reason="pending")
            if n % 50 == 49:
                log.flush()
                reader.refresh()
            log.write_shadow(request_id=f"r{n}", shadow=_answer("2", 0.3))
            if n % 50 == 49:
                compare_followed_log(tmp_path)  # the gateway's worker, looking now and then
    remaining = read_prediction_log(tmp_path)
    assert 0 < len(remaining) < 400, "retention deleted the oldest segments"
    followed = compare_followed_log(tmp_path)
    _same(followed, compare_shadow(remaining))
    assert followed.requests == len(remaining)
    _same(compare_evidence(reader.refresh().evidence()), followed)
    assert len(reader._seen) == len(remaining), "the ids of deleted segments are let go"


def _log_of(folder: Path, requests: int) -> None:
    with PredictionLogWriter(folder) as log:
        for n in range(requests):
            log.write_request(request_id=f"{n:032x}", client_request_id=None, records=[RECORD],
                              production=_answer("1", (n % 100) / 100), mirrored=True, shadow_reason="pending")
            log.write_shadow(request_id=f"{n:032x}", shadow=_answer("2", (n % 97) / 97, latency_ms=2.5))


def test_following_a_log_keeps_a_few_hundred_bytes_per_request(tmp_path: Path) -> None:
    """Measured with tracemalloc: what the reader holds once it has read 20,000 requests of
    the fraud example (each about 800 bytes in the log), and its peak while reading."""
    requests = 20_000
    _log_of(tmp_path, requests)
    log_bytes = sum(path.stat().st_size for path in segment_paths(tmp_path))
    tracemalloc.start()
    try:
        reader = ShadowEvidenceReader(tmp_path).refresh()
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        comparison = compare_evidence(reader.evidence())
        _, comparing = tracemalloc.get_traced_memory()
        del reader
        entries = PredictionLogReader(tmp_path, keep_records=False).refresh()  # what the worker used to keep
        kept, _ = tracemalloc.get_traced_memory()
        del entries
    finally:
        tracemalloc.stop()
    assert comparison.compared_requests == requests
    print(f"log {log_bytes / requests:.0f} B per request; held {held / requests:.0f} B per request "
          f"(the joined entries: {kept / requests:.0f} B), peak {peak / 2**20:.1f} MiB reading, "
          f"{comparing / 2**20:.1f} MiB comparing")
    assert held / requests < 400 and held < kept / 5
    assert peak < held + 8 * 2**20, "reading holds a block of the log at a time, not the log"
    assert comparing < held + 8 * 2**20


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, filled up to its last 16 KiB."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; this test must run where CI is root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        (mount / "filler").write_bytes(b"\0" * 240 * 2**10)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_write_that_fails_part_way_is_retried_without_writing_an_entry_twice(full_disk: Path) -> None:
    log_dir = full_disk / "log"
    writer = PredictionLogWriter(log_dir, settings=PredictionLogSettings(flush_interval_s=3600))
    try:
        for n in range(60):  # about 30 KiB: more than the disk has left
            writer.write_request(request_id=f"r{n}", records=[RECORD], production=_answer("1", 0.2), mirrored=False,
                                 shadow_reason="not sampled")
        with pytest.raises(OSError):
            writer.flush()
        written = [entry["request_id"] for entry in iter_log_entries(log_dir)]
        assert 0 < len(written) < 60, "part of the entries reached the disk"
        (full_disk / "filler").unlink()
        writer.flush()
    finally:
        writer.close()
    ids = [entry["request_id"] for entry in iter_log_entries(log_dir)]
    assert sorted(ids, key=lambda i: int(i[1:])) == [f"r{n}" for n in range(60)], "each entry once, none lost"
