"""What `modelcycle run` (and `modelcycle loop`) say when the pipeline fails: the task's own
exception, even when kfp's logging adds tracebacks of its own after it."""

from modelcycle.cli.project import _failure_reason

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
