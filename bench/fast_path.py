"""Bench: one record predicted in-process, the bento's fast path against its scikit-learn path.

Both sides start from what the bento's handler holds, a checked record as a dict, and end
with the answer it sends (predictions and per-class probabilities). The scikit-learn side
is what the bento did before the fast path: build the DataFrame (`RecordChecker.frame`),
`predict_proba`, `decide`. The fast path is `FastPath.predict` through ONNX Runtime. Each
is timed over the same records of the test split; the medians are compared. Target: the
fast path 20x faster or more.

    .venv/bin/python bench/fast_path.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def median_ms(call, records: list[dict], repeat: int) -> float:
    times = []
    for i in range(repeat):
        record = [records[i % len(records)]]
        started = time.perf_counter()
        call(record)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    from export.trained import build_project, records
    from fraud_example import load_generator, regression_spec_dict, small_spec_dict
    from modelcycle.serving.fastpath import FastPath
    from modelcycle.serving.requests import RecordChecker

    generator = load_generator()
    with tempfile.TemporaryDirectory(prefix="bench-fast-path-") as tmp:
        project = build_project(Path(tmp), generator.generate(20_000), {
            "fraud": (small_spec_dict(), "logistic_regression", {}),
            "fraud-forest": (small_spec_dict(), "random_forest", {"n_estimators": 150, "max_depth": 10}),
            "fraud-boosting": (small_spec_dict(), "hist_gradient_boosting", {"max_iter": 100}),
            "amount": (regression_spec_dict(), "ridge", {}),
        })
        print("one record, in-process, median of 500 calls (after 50 warm-up calls)")
        print(f"  {'model':<40} {'scikit-learn':>13} {'fast path':>10} {'speed-up':>9}  parity")
        for name in project.specs:
            model = project.registry.load(name, 1)
            checker = RecordChecker(model.schema)
            sent = records(project.test_split(name).drop(columns=[model.target]).head(500))
            fast = FastPath.start(model, what=name)
            assert fast.path == "onnx", fast.reason
            slow = FastPath(model, None, reason="the scikit-learn path", max_difference=None)
            for path in (fast, slow):
                median_ms(lambda r, p=path: p.predict(r, checker.frame), sent, 50)
            ms_slow = median_ms(lambda r: slow.predict(r, checker.frame), sent, 500)
            ms_fast = median_ms(lambda r: fast.predict(r, checker.frame), sent, 500)
            label = f"{name} ({model.algorithm})"
            print(f"  {label:<40} {ms_slow:>10.3f} ms {ms_fast:>7.3f} ms {ms_slow / ms_fast:>8.0f}x  "
                  f"{fast.max_difference:.1g}   (target >= 20x)")


if __name__ == "__main__":
    main()
