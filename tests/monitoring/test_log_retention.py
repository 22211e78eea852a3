"""The prediction log stays within its volume: retention by size and age, and a full disk.

The gateway's log lives on a small emptyDir. Old segments are deleted whole, oldest first,
and counted; a full disk (a real one: a 1 MiB tmpfs) sheds shadow entries and caps the
memory the log holds, while production answers go on unchanged.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_upstreams import running_gateway, start_upstreams
from modelcycle.monitoring.predictions import (
    PredictionLogSettings,
    PredictionLogWriter,
    UpstreamAnswer,
    iter_log_entries,
    segment_paths,
)
from modelcycle.serving.gateway import GATEWAY, GatewayConfig


def _answer(predictions: list[Any]) -> UpstreamAnswer:
    return {"model": "m", "version": "1", "predictions": predictions, "probabilities": None,
            "latency_ms": 1.0, "status": 200, "error": None}


def _log_bytes(log_dir: Path) -> int:
    return sum(path.stat().st_size for path in segment_paths(log_dir))


def test_retention_deletes_the_oldest_segments_past_the_size_limit(tmp_path: Path) -> None:
    settings = PredictionLogSettings(max_segment_bytes=2000, retain_bytes=6000, flush_interval_s=3600)
    with PredictionLogWriter(tmp_path, settings=settings) as log:
        for n in range(300):
            log.write_request(request_id=f"r{n:04d}", records=[{"a": n}], production=_answer([1]), mirrored=False)
            if n % 10 == 9:
                log.flush()
        written = sum(1 for _ in iter_log_entries(tmp_path))
        assert _log_bytes(tmp_path) <= 6000
        stats = log.stats
    kept = [entry["request_id"] for entry in iter_log_entries(tmp_path)]
    assert kept == [f"r{n:04d}" for n in range(300 - written, 300)], "the newest entries are kept, in order"
    assert stats.segments_deleted > 0
    bytes_per_entry = _log_bytes(tmp_path) / len(kept)
    assert stats.bytes_deleted == pytest.approx((300 - len(kept)) * bytes_per_entry, rel=0.05)


def test_retention_deletes_segments_older_than_the_age_limit(tmp_path: Path) -> None:
    with PredictionLogWriter(tmp_path) as log:
        log.write_request(request_id="old", records=None, production=_answer([1]), mirrored=False)
    old = segment_paths(tmp_path)
    week_ago = time.time() - 8 * 86400
    for path in old:
        os.utime(path, (week_ago, week_ago))
    with PredictionLogWriter(tmp_path, settings=PredictionLogSettings(retain_age_s=7 * 86400)) as log:
        log.write_request(request_id="new", records=None, production=_answer([1]), mirrored=False)
        log.flush()
        assert log.stats.segments_deleted == len(old) == 1
        assert log.stats.bytes_deleted > 0
    assert [entry["request_id"] for entry in iter_log_entries(tmp_path)] == ["new"]


# The gateway, over real HTTP, in front of the model servers of tests/serving/test_gateway.py.

@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    with start_upstreams() as urls:
        yield urls


def _batch(n: int) -> dict[str, Any]:
    """A batch of 20 records, about 1.6 KiB with its padding."""
    return {"records": [{"x1": (n % 7) / 7 - 0.5, "x2": (k % 5) / 5 - 0.4, "note": "x" * 40} for k in range(20)]}


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with session.get(f"{url}/metrics") as answer:
        assert answer.status == 200
        text = await answer.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_the_gateway_keeps_its_log_within_the_retention_and_counts_what_it_deleted(
    upstreams: dict[str, str], tmp_path: Path
) -> None:
    settings = PredictionLogSettings(max_segment_bytes=8 * 2**10, retain_bytes=32 * 2**10, flush_interval_s=0.05)
    config = GatewayConfig(production_url=upstreams["production"], log_dir=tmp_path, log=settings)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, _):
        for n in range(60):
            async with session.post(f"{url}/predict", json=_batch(n)) as answer:
                assert answer.status == 200
        await asyncio.sleep(0.2)
        async with session.post(f"{url}/predict", json=_batch(0)) as answer:
            assert answer.status == 200
        await asyncio.sleep(0.2)
        samples = await _metrics(session, url)
        assert _log_bytes(tmp_path) <= 32 * 2**10
    assert samples[("modelcycle_prediction_log_deleted_segments_total", ())] >= 5
    assert samples[("modelcycle_prediction_log_deleted_bytes_total", ())] >= 5 * 7 * 2**10


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, filled up to its last 96 KiB."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; this test must run where CI is root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        (mount / "filler").write_bytes(b"\0" * (1024 - 96) * 2**10)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


async def test_a_full_disk_sheds_mirror_logging_and_bounds_memory_but_never_production_answers(
    upstreams: dict[str, str], full_disk: Path
) -> None:
    log_dir = full_disk / "log"
    settings = PredictionLogSettings(flush_interval_s=0.02, max_buffered_bytes=64 * 2**10)
    config = GatewayConfig(production_url=upstreams["production"], shadow_url=upstreams["shadow"],
                           log_dir=log_dir, log=settings)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, app):
        gateway = app[GATEWAY]
        for n in range(300):
            body = _batch(n)
            async with session.post(f"{url}/predict", json=body) as answer:
                assert answer.status == 200
                via_gateway = await answer.json()
            async with session.post(f"{upstreams['production']}/predict", json=body) as answer:
                direct = await answer.json()
            assert via_gateway["predictions"] == direct["predictions"]
            assert gateway.log._buffered_bytes <= settings.max_buffered_bytes
            if n % 50 == 0:
                await gateway.queue.join()
                await asyncio.sleep(0.05)
        await gateway.queue.join()
        samples = await _metrics(session, url)
        async with session.get(f"{url}/shadow/comparison") as answer:
            assert answer.status == 200, "a full disk is no reason for the comparison to fail"
        written_while_full = sum(1 for _ in iter_log_entries(log_dir))
        (full_disk / "filler").unlink()  # space again: the log writes what it kept, then the rest
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, gateway.log.flush)
        async with session.post(f"{url}/predict", json=_batch(0), headers={"X-Request-ID": "after"}) as answer:
            assert answer.status == 200
        await gateway.queue.join()
        await loop.run_in_executor(None, gateway.log.flush)
        after = [e for e in iter_log_entries(log_dir) if e.get("client_request_id") == "after"]
        assert len(after) == 1, "the log did not recover once the disk had space"
        assert any(e["type"] == "shadow" and e["request_id"] == after[0]["request_id"]
                   for e in iter_log_entries(log_dir)), "nor did mirror logging"
    dropped = {labels: value for (name, labels), value in samples.items()
               if name == "modelcycle_prediction_log_dropped_entries_total"}
    assert dropped[(("reason", "disk_full"), ("type", "shadow"))] > 0
    assert dropped[(("reason", "buffer_full"), ("type", "request"))] > 0
    assert written_while_full < 600
