"""What `modelcycle run` (and `modelcycle loop`) say when the pipeline fails: the task's own
exception, even when kfp's logging adds tracebacks of its own after it."""

import contextlib
import io
import logging

from modelcycle.cli.project import _failure_reason, _root_handlers_kept

TASK = """\
    raise DataValidationError(report, context="...")
modelcycle.validation.DataValidationError: data validation failed: data version 9ceff0b6f0e0 is kept but marked invalid
4,500 rows: 1 error(s)
error: column 'amount': check greater_than_or_equal_to(0.0) failed on 25 rows

"""
LOGGING_ERROR = """\
--- Logging error ---
Traceback (most recent call last):
  File "/usr/lib/python3.11/logging/__init__.py", line 1113, in emit
ValueError: I/O operation on closed file.

"""


def test_the_tasks_exception_wins_over_a_later_logging_error() -> None:
    reason = _failure_reason((TASK + LOGGING_ERROR * 3).splitlines())
    assert reason.startswith("modelcycle.validation.DataValidationError: data validation failed")
    assert "column 'amount'" in reason


def test_without_one_of_ours_the_last_exception() -> None:
    assert _failure_reason(LOGGING_ERROR.splitlines()) == "ValueError: I/O operation on closed file."


def test_a_handler_added_during_a_run_is_gone_after_it(tmp_path) -> None:
    """What kfp.local does: `logging.info()` with no root handler calls basicConfig, which
    binds a handler to the stderr of the moment, the run's log file."""
    root = logging.getLogger()
    before = root.handlers[:]
    root.handlers.clear()
    try:
        with open(tmp_path / "last-run.log", "w") as log:
            with contextlib.redirect_stderr(log), _root_handlers_kept():
                logging.info("inside the run")
                assert root.handlers  # basicConfig did add one
        assert root.handlers == []
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            logging.warning("after the run")  # with the run's handler kept: a closed file
        assert "Logging error" not in stderr.getvalue()
    finally:
        root.handlers[:] = before
