"""Bench: the local modelcycle pipeline against a plain scikit-learn script doing the same fit.

Same data (the fraud example), same splits, same candidates, same searches. The pipeline
does more than the script (a content-addressed snapshot, validation, a full evaluation
with importance and latency, a report, registration), and each kfp.local task is its own
process; the ratio says what that costs. Target: 1.3x or less at 1M rows.

Both wall time and CPU time (this process and every child it waited for, so kfp.local's
task processes and their joblib workers count) are printed: on a shared machine the CPU
ratio is the steadier figure.

    .venv/bin/python bench/pipeline.py            # 100k and 1M rows
    .venv/bin/python bench/pipeline.py --rows 100000
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fraud"


def bench_spec() -> dict:
    spec = yaml.safe_load((EXAMPLE / "modelcycle.yaml").read_text())
    spec["training"].update(search_iterations=2, cv_folds=2, search_max_rows=100_000)
    for cand in spec["training"]["candidates"]:
        if cand["algorithm"] == "random_forest":
            cand["params"] = {"n_estimators": 60}
            cand["search_space"] = {"max_depth": [8, 12], "min_samples_leaf": [20, 50]}
    return spec


def cpu_seconds() -> float:
    """CPU time of this process and of every finished child process, user plus system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    gen_spec = importlib.util.spec_from_file_location("gen", EXAMPLE / "generate.py")
    gen = importlib.util.module_from_spec(gen_spec)
    gen_spec.loader.exec_module(gen)
    from modelcycle.pipelines import run_local
    from modelcycle.registry import Registry, parse_model_ref

    rows_out = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
            root = Path(tmp)
            (root / "data").mkdir()
            gen.generate(rows).to_parquet(root / "data" / "transactions.parquet", index=False)
            spec = bench_spec()
            (root / "modelcycle.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
            (root / "spec.json").write_text(json.dumps(spec))

            started, cpu = time.perf_counter(), cpu_seconds()
            plain = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "plain_sklearn.py"),
                                    str(root / "data" / "transactions.parquet"), str(root / "spec.json")],
                                   capture_output=True, text=True, check=True)
            plain_wall, plain_cpu = time.perf_counter() - started, cpu_seconds() - cpu
            plain_result = json.loads(plain.stdout.strip().splitlines()[-1])

            started, cpu = time.perf_counter(), cpu_seconds()
            with contextlib.redirect_stdout(io.StringIO()):
                result = run_local(root / "modelcycle.yaml", workdir=root / ".modelcycle")
            ours_wall, ours_cpu = time.perf_counter() - started, cpu_seconds() - cpu
            name, ref = parse_model_ref(result.model_version)
            version = Registry(root / ".modelcycle" / "registry").get(name, ref)
            rows_out.append((rows, ours_wall, plain_wall, ours_cpu, plain_cpu, version.params["algorithm"],
                             version.metrics["test.roc_auc"], plain_result["best"], plain_result["test_roc_auc"]))
            print(f"{rows:>9,} rows: pipeline {ours_wall:7.1f} s wall / {ours_cpu:7.1f} s CPU, plain sklearn "
                  f"{plain_wall:7.1f} s wall / {plain_cpu:7.1f} s CPU: ratio {ours_wall / plain_wall:4.2f}x wall, "
                  f"{ours_cpu / plain_cpu:4.2f}x CPU (target <= 1.3x at 1M rows)", flush=True)
    print("\n| rows | pipeline wall / CPU (s) | plain sklearn wall / CPU (s) | ratio wall | ratio CPU | pipeline best, test AUC | plain best, test AUC |")
    print("|---:|---:|---:|---:|---:|---|---|")
    for rows, ours, plain, ours_cpu, plain_cpu, algo, auc, palgo, pauc in rows_out:
        print(f"| {rows:,} | {ours:.1f} / {ours_cpu:.1f} | {plain:.1f} / {plain_cpu:.1f} | {ours / plain:.2f}x | "
              f"{ours_cpu / plain_cpu:.2f}x | {algo}, {auc:.4f} | {palgo}, {pauc:.4f} |")


if __name__ == "__main__":
    main()
