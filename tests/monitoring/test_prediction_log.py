"""The prediction log: entries written by PredictionLogWriter read back by read_prediction_log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from modelcycle.monitoring.predictions import (
    LogFormatError,
    PredictionLogReader,
    PredictionLogSettings,
    PredictionLogWriter,
    UpstreamAnswer,
    iter_log_entries,
    read_prediction_log,
    segment_paths,
)


def _answer(version: str, predictions: list[int], *, status: int = 200, error: str | None = None) -> UpstreamAnswer:
    return {
        "model": "fraud",
        "version": version,
        "predictions": predictions,
        "probabilities": [{"0": 1.0 - 0.9 * p, "1": 0.9 * p} for p in predictions],
        "latency_ms": 1.5,
        "status": status,
        "error": error,
    }


class FakeClock:
    """A fake clock, so that segment age can be tested without waiting."""

    def __init__(self, now: float = 1_764_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_requests_read_back_one_row_per_prediction_with_the_shadow_joined(tmp_path: Path) -> None:
    with PredictionLogWriter(tmp_path) as log:
        log.write_request(
            request_id="batch", records=[{"amount": 1}, {"amount": 2}, {"amount": 3}],
            production=_answer("3", [0, 1, 1]), mirrored=True, shadow_reason="pending",
        )
        log.write_shadow(request_id="batch", shadow=_answer("4", [0, 1, 0]))
        log.write_request(
            request_id="alone", records=[{"amount": 5}], production=_answer("3", [1]),
            mirrored=False, shadow_reason="not sampled",
        )
        log.write_request(
            request_id="invalid", records=[{"amount": "x"}], mirrored=True, shadow_reason="pending",
            production={**_answer("3", []), "predictions": None, "probabilities": None, "status": 422,
                        "error": "field 'amount' must be a number"},
        )

    frame = read_prediction_log(tmp_path).set_index(["request_id", "row"])
    assert len(frame) == 5
    batch = frame.loc["batch"]
    assert list(batch["production_prediction"]) == [0, 1, 1]
    assert list(batch["shadow_prediction"]) == [0, 1, 0]
    assert list(batch["record"]) == [{"amount": 1}, {"amount": 2}, {"amount": 3}]
    assert batch["production_probabilities"].iloc[1] == {"0": pytest.approx(0.1), "1": 0.9}
    assert set(batch["shadow_version"]) == {"4"} and set(batch["production_version"]) == {"3"}
    assert batch["shadow_reason"].isna().all() and batch["mirrored"].all()
    assert frame.loc[("alone", 0), "shadow_reason"] == "not sampled"
    assert frame.loc[("alone", 0), "shadow_prediction"] is None
    invalid = frame.loc[("invalid", 0)]
    assert invalid["production_status"] == 422 and "amount" in invalid["production_error"]
    assert invalid["shadow_reason"] == "pending"
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"


def test_an_empty_log_reads_as_an_empty_frame_with_the_columns(tmp_path: Path) -> None:
    frame = read_prediction_log(tmp_path)
    assert frame.empty and "shadow_prediction" in frame.columns


def test_feedback_labels_rows_and_the_latest_label_wins(tmp_path: Path) -> None:
    with PredictionLogWriter(tmp_path) as log:
        log.write_request(request_id="one", records=[{"a": 1}], production=_answer("1", [1]), mirrored=False)
        log.write_request(request_id="two", records=[{"a": 1}, {"a": 2}], production=_answer("1", [0, 1]), mirrored=False)
        log.write_feedback(request_id="one", label="fraud", ts=10.0)
        log.write_feedback(request_id="one", label="legit", ts=20.0)
        log.write_feedback(request_id="one", label="stale", ts=15.0)
        log.write_feedback(request_id="two", label=0, ts=10.0)
        log.write_feedback(request_id="two", label=1, row=1, ts=11.0)
        log.write_feedback(request_id="unknown", label=1, ts=12.0)

    frame = read_prediction_log(tmp_path).set_index(["request_id", "row"])
    assert frame.loc[("one", 0), "label"] == "legit"
    assert frame.loc[("two", 0), "label"] == 0
    assert frame.loc[("two", 1), "label"] == 1
    assert frame.loc[("two", 1), "label_ts"].timestamp() == 11.0
    assert "unknown" not in frame.index.get_level_values("request_id")


def test_segments_rotate_by_size_and_keep_every_entry_in_order(tmp_path: Path) -> None:
    settings = PredictionLogSettings(max_segment_bytes=2_000, flush_interval_s=3600)
    with PredictionLogWriter(tmp_path, settings=settings) as log:
        for n in range(60):
            log.write_request(request_id=f"r{n:03d}", records=[{"a": n}], production=_answer("1", [n % 2]), mirrored=False)
            if n % 7 == 0:
                log.flush()

    segments = segment_paths(tmp_path)
    assert len(segments) > 3
    assert all(path.stat().st_size <= 2_000 for path in segments)
    assert [entry["request_id"] for entry in iter_log_entries(tmp_path)] == [f"r{n:03d}" for n in range(60)]


def test_segments_rotate_by_age(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = PredictionLogSettings(max_segment_age_s=60, flush_interval_s=3600)
    with PredictionLogWriter(tmp_path, settings=settings, clock=clock) as log:
        for step in (0, 30, 59, 61, 100, 122):
            clock.now = 1_764_000_000.0 + step
            log.write_request(request_id=f"at-{step}", records=None, production=_answer("1", [1]), mirrored=False)
            log.flush()

    contents = [
        [json.loads(line)["request_id"] for line in path.read_text().splitlines()]
        for path in segment_paths(tmp_path)
    ]
    assert contents == [["at-0", "at-30", "at-59"], ["at-61", "at-100"], ["at-122"]]


def test_the_open_segment_is_readable_and_flushed_within_the_interval(tmp_path: Path) -> None:
    settings = PredictionLogSettings(flush_interval_s=0.05)
    log = PredictionLogWriter(tmp_path, settings=settings)
    try:
        log.write_request(request_id="early", records=[{"a": 1}], production=_answer("1", [1]), mirrored=False)
        deadline = time.monotonic() + 5
        while read_prediction_log(tmp_path).empty:
            assert time.monotonic() < deadline, "the entry did not reach the disk within the flush interval"
            time.sleep(0.01)
        assert list(read_prediction_log(tmp_path)["request_id"]) == ["early"]
        log.write_request(request_id="late", records=[{"a": 1}], production=_answer("1", [1]), mirrored=False)
        log.flush()
        assert list(read_prediction_log(tmp_path)["request_id"]) == ["early", "late"]
    finally:
        log.close()


def test_close_writes_everything_and_later_writes_fail(tmp_path: Path) -> None:
    log = PredictionLogWriter(tmp_path, settings=PredictionLogSettings(flush_interval_s=3600))
    for n in range(500):
        log.write_request(request_id=f"r{n}", records=[{"a": n}], production=_answer("1", [1]), mirrored=False)
    assert read_prediction_log(tmp_path).empty
    log.close()
    log.close()
    assert len(read_prediction_log(tmp_path)) == 500
    with pytest.raises(RuntimeError, match="closed"):
        log.write_feedback(request_id="r1", label=1)


def test_many_buffered_entries_are_flushed_before_the_interval(tmp_path: Path) -> None:
    settings = PredictionLogSettings(flush_interval_s=3600, max_buffered_entries=10)
    with PredictionLogWriter(tmp_path, settings=settings) as log:
        for n in range(10):
            log.write_feedback(request_id=f"r{n}", label=1)
        deadline = time.monotonic() + 5
        while len(list(iter_log_entries(tmp_path))) < 10:
            assert time.monotonic() < deadline, "a full buffer was not flushed"
            time.sleep(0.01)


def test_a_torn_last_line_is_skipped_and_a_damaged_line_elsewhere_is_named(tmp_path: Path) -> None:
    with PredictionLogWriter(tmp_path) as log:
        for n in range(3):
            log.write_request(request_id=f"r{n}", records=[{"a": n}], production=_answer("1", [1]), mirrored=False)
    (segment,) = segment_paths(tmp_path)
    with segment.open("ab") as file:
        file.write(b'{"type":"request","request_id":"torn","ts":1.0,"reco')
    assert list(read_prediction_log(tmp_path)["request_id"]) == ["r0", "r1", "r2"]

    with segment.open("ab") as file:
        file.write(b"\x00\x00\n")
    assert list(read_prediction_log(tmp_path)["request_id"]) == ["r0", "r1", "r2"]

    lines = segment.read_bytes().split(b"\n")
    segment.write_bytes(b"\n".join([lines[0], b"not json", *lines[1:]]))
    with pytest.raises(LogFormatError, match=rf"{segment.name}:2: expected a JSON log entry"):
        read_prediction_log(tmp_path)


def test_a_reader_follows_a_growing_log_reading_each_byte_once(tmp_path: Path) -> None:
    reader = PredictionLogReader(tmp_path)
    assert reader.refresh().frame().empty
    with PredictionLogWriter(tmp_path, settings=PredictionLogSettings(max_segment_bytes=600)) as log:
        log.write_request(request_id="a", records=[{"x": 1}], production=_answer("1", [1]), mirrored=True,
                          shadow_reason="pending")
        log.flush()
        first = reader.refresh().frame()
        assert list(first["request_id"]) == ["a"] and first.loc[0, "shadow_reason"] == "pending"
        log.write_shadow(request_id="a", shadow=_answer("2", [0]))
        for n in range(6):  # enough to rotate into new segments
            log.write_request(request_id=f"b{n}", records=[{"x": n}], production=_answer("1", [0]), mirrored=False)
        log.write_feedback(request_id="a", label=1)
    assert len(segment_paths(tmp_path)) > 1
    (segment, *_) = segment_paths(tmp_path)
    read_so_far = segment.stat().st_size
    with segment.open("ab") as file:  # a line being written: picked up once it is whole
        file.write(b'{"type":"feedback","request_id":"b0","ts":1.0,')
    frame = reader.refresh().frame()
    assert frame.equals(read_prediction_log(tmp_path))
    assert frame.set_index("request_id").loc["a", ["shadow_prediction", "label"]].tolist() == [0, 1]
    with segment.open("ab") as file:
        file.write(b'"label":0,"row":null}\n')
    assert reader.refresh().frame().set_index("request_id").loc["b0", "label"] == 0
    assert reader.tail.consumed(segment) == read_so_far + len(b'{"type":"feedback","request_id":"b0","ts":1.0,'
                                                                b'"label":0,"row":null}\n')
    with segment.open("ab") as file:
        file.write(b"not json\n" + json.dumps({"type": "feedback", "request_id": "b1", "ts": 2.0, "label": 1}).encode()
                   + b"\n")
    lines = segment.read_bytes().count(b"\n")
    with pytest.raises(LogFormatError, match=rf"{segment.name}:{lines - 1}: expected a JSON log entry"):
        reader.refresh()


def test_a_new_writer_starts_a_new_segment_next_to_the_old_ones(tmp_path: Path) -> None:
    for run in range(2):
        with PredictionLogWriter(tmp_path) as log:
            log.write_request(request_id=f"run-{run}", records=None, production=_answer("1", [1]), mirrored=False)
    assert len(segment_paths(tmp_path)) == 2
    assert sorted(read_prediction_log(tmp_path)["request_id"]) == ["run-0", "run-1"]


def test_settings_reject_nonsense_naming_the_field() -> None:
    with pytest.raises(ValueError, match="flush_interval_s"):
        PredictionLogSettings(flush_interval_s=0)
