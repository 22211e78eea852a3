"""When a breach retrains the model, and the guard rails around it.

Both closed loops, `modelcycle loop` on this machine and the operator on Kubernetes, ask the
same two questions of the same history, with the functions here:

- `breach`: does this monitoring result call for a retraining? Dataset drift or the live
  metric under the goal, as the spec's ``monitoring.retrain.triggers`` allow, and only on a
  window with at least ``min_rows`` live rows (a handful of requests proves nothing);
- `admit`: may one start now? Not while one runs (a retrained version serving as shadow
  still counts as running, until its verdict), not within the cooldown after the last
  start, and not beyond ``max_per_day`` starts in any 24 hours. A refusal says which rail,
  and when the next start is allowed.

An `Attempt` is one retraining from trigger to verdict. Its outcome ends as:

- ``promoted``: the shadow's verdict was promote; the new version is the champion;
- ``rejected``: the new version failed a gate, or its shadow verdict was reject; production
  stays as it was, and `message` says why;
- ``invalid_data``: the newest data failed validation, so nothing was trained on it;
- ``failed``: the pipeline failed for another reason (or the process running it died).

While it runs it is ``training`` and then ``shadow``. `RetrainLedger` keeps the attempts of
one model on local disk for `modelcycle loop`, written atomically, with a file lock that
makes "one at a time" hold across processes too; the operator keeps them in the
ModelDeployment's status.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, Field

from modelcycle.spec import RetrainSpec

Trigger = Literal["drift", "performance"]
Outcome = Literal["training", "shadow", "promoted", "rejected", "invalid_data", "failed"]
RUNNING: frozenset[str] = frozenset({"training", "shadow"})
DAY = dt.timedelta(days=1)
RUN_RESULT_ENV = "MODELCYCLE_RUN_RESULT"
"""A file `modelcycle run` writes its result to, one line of JSON: what a retraining Job's
termination message carries to the operator."""
KEEP_ATTEMPTS = 50
"""Attempts a ledger keeps; older ones are dropped (the daily cap needs one day's worth)."""


class Attempt(BaseModel):
    """One retraining, from the breach that started it to its verdict."""

    trigger: Trigger
    reasons: list[str] = Field(default_factory=list)
    """What the monitoring check found, in its own words."""
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    outcome: Outcome = "training"
    version: int | str | None = None
    """The version the retraining registered, once it has (an alias where only that is known)."""
    message: str = ""
    """Why it ended as it did, for a person."""


class Admission(BaseModel):
    allowed: bool
    reason: str
    next_allowed_at: dt.datetime | None = None


def breach(verdict: str, rows: int, policy: RetrainSpec) -> Trigger | None:
    """The trigger a monitoring verdict (``ok``, ``drift`` or ``performance``) pulls, if any."""
    if verdict not in ("drift", "performance") or verdict not in policy.triggers or rows < policy.min_rows:
        return None
    return verdict  # type: ignore[return-value]


def admit(history: Sequence[Attempt], policy: RetrainSpec, *, now: dt.datetime) -> Admission:
    """Whether a retraining may start at `now`, given the earlier attempts (any order)."""
    if running := [a for a in history if a.outcome in RUNNING]:
        current = max(running, key=lambda a: a.started_at)
        what = f"version {current.version} is serving as shadow" if current.outcome == "shadow" else "it is training"
        return Admission(allowed=False, reason=f"one retraining at a time: the one started at "
                         f"{_when(current.started_at)} has not ended ({what})")
    starts = sorted(a.started_at for a in history)
    cooldown = dt.timedelta(seconds=policy.cooldown_seconds)
    if starts and now - starts[-1] < cooldown:
        return Admission(allowed=False, next_allowed_at=starts[-1] + cooldown,
                         reason=f"cooldown: the last retraining started at {_when(starts[-1])}, and "
                         f"monitoring.retrain.cooldown is {policy.cooldown}; next start allowed at "
                         f"{_when(starts[-1] + cooldown)}")
    today = [t for t in starts if now - t < DAY]
    if len(today) >= policy.max_per_day:
        next_at = today[-policy.max_per_day] + DAY
        return Admission(allowed=False, next_allowed_at=next_at,
                         reason=f"daily cap: {len(today)} retrainings started in the last 24 hours, and "
                         f"monitoring.retrain.max_per_day is {policy.max_per_day}; next start allowed at "
                         f"{_when(next_at)}")
    return Admission(allowed=True, reason="no retraining running, outside the cooldown, under the daily cap")


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class RetrainBusy(RuntimeError):
    """Another process holds this model's retraining lock."""


class _Ledger(BaseModel):
    attempts: list[Attempt] = Field(default_factory=list)


class RetrainLedger:
    """The retraining attempts of one model in a JSON file, for `modelcycle loop`.

    `begin` takes the model's lock (without waiting) and records a ``training`` attempt; the
    lock stays held while the attempt runs in this process. An attempt left ``training`` by
    a process that died holds no lock: the next `begin` or `attempts` marks it ``failed``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock = FileLock(str(self.path) + ".lock")

    def attempts(self) -> list[Attempt]:
        if not self.path.exists():
            return []
        ledger = _Ledger.model_validate_json(self.path.read_bytes())
        if not self._lock.is_locked and any(a.outcome == "training" for a in ledger.attempts):
            try:
                with self._lock.acquire(timeout=0):
                    return self._mark_orphans(ledger).attempts
            except Timeout:
                pass  # another process is training: its attempt is not an orphan
        return ledger.attempts

    def begin(self, trigger: Trigger, reasons: Sequence[str], *, now: dt.datetime) -> Attempt:
        """Record a new attempt and hold the lock until `finish`; raise `RetrainBusy` if another
        process holds it."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RetrainBusy(f"another process is retraining (lock {self._lock.lock_file})") from None
        attempt = Attempt(trigger=trigger, reasons=list(reasons), started_at=now)
        ledger = self._mark_orphans(self._read())
        self._write(_Ledger(attempts=[*ledger.attempts, attempt][-KEEP_ATTEMPTS:]))
        return attempt

    def update(self, attempt: Attempt, **changes: object) -> Attempt:
        """Record changes to `attempt` (found by its start); the lock is released once the
        outcome is no longer running."""
        updated = attempt.model_copy(update=changes)
        ledger = self._read()
        ledger.attempts = [updated if a.started_at == attempt.started_at else a for a in ledger.attempts]
        self._write(ledger)
        if updated.outcome not in RUNNING and self._lock.is_locked:
            self._lock.release(force=True)
        return updated

    def _read(self) -> _Ledger:
        return _Ledger.model_validate_json(self.path.read_bytes()) if self.path.exists() else _Ledger()

    def _write(self, ledger: _Ledger) -> None:
        from modelcycle.artifacts import write_atomic  # not at the top: the operator image has no joblib

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, ledger.model_dump_json(indent=2).encode())

    def _mark_orphans(self, ledger: _Ledger) -> _Ledger:
        orphans = [a for a in ledger.attempts if a.outcome == "training"]
        if orphans:
            ledger.attempts = [a.model_copy(update={"outcome": "failed", "finished_at": now_utc(),
                                                    "message": "the process running this retraining stopped "
                                                               "before it ended"}) if a in orphans else a
                               for a in ledger.attempts]
            self._write(ledger)
        return ledger
