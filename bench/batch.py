"""Bench: `modelcycle predict` on a million rows against a plain script doing the same.

The peer is what anyone would write: read the Parquet file in chunks, call the fitted
pipeline's `predict_proba` on each whole chunk, write the probabilities to Parquet.
`modelcycle predict` does more per chunk (checks every record against the schema, writes
the id, prediction, probabilities, model, version and timestamp, keeps a resumable staging
folder and merges it at the end); the ratio says what that costs. Target: 0.8x the peer's
throughput or better. The same run with `--engine onnx` (the version's parity-checked ONNX
export) is printed next to it.

Every run is its own process (the console script, as a user runs it; the peer with
`python -c`), started after the model is registered, and its peak resident memory comes
from the kernel (`wait4`). Peak memory is measured at two chunk sizes and at two input
sizes: it follows the chunk, not the input.

    .venv/bin/python bench/batch.py                 # 1,000,000 rows
    .venv/bin/python bench/batch.py --rows 200000
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PEER = """
import sys, joblib, pyarrow as pa, pyarrow.parquet as pq
from modelcycle.registry import Registry
model = Registry(sys.argv[1]).load("fraud", 1)
writer = None
for batch in pq.ParquetFile(sys.argv[2]).iter_batches(batch_size=int(sys.argv[4])):
    frame = batch.to_pandas()
    proba = model.pipeline.predict_proba(frame)
    table = pa.table({"transaction_id": frame["transaction_id"], "probability": proba[:, 1]})
    writer = writer or pq.ParquetWriter(sys.argv[3], table.schema)
    writer.write_table(table)
writer.close()
"""


MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime, done.returncode)
"""
"""Runs a command and prints its peak resident memory (kB). A child's peak counts the pages of
the process that forked it, so the bench, which holds the generated rows, forks this small
process, and this one forks the measured command."""


def run(args: list[str], *, cwd: Path) -> tuple[float, float, float]:
    """(wall seconds, peak resident MB, CPU seconds) of one command."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_kb, cpu, code = done.stdout.split()
    if int(code) not in (0, 4):
        raise SystemExit(f"{args[:3]} failed with exit code {code}")
    return seconds, int(peak_kb) / 1024, float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    opts = parser.parse_args()

    from export.trained import build_project
    from fraud_example import load_generator, small_spec_dict

    generator = load_generator()
    modelcycle = str(Path(sys.executable).with_name("modelcycle"))
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = Path(tmp)
        print(f"generating {opts.rows:,} rows ...", flush=True)
        frame = generator.generate(opts.rows, seed=11)
        frame.drop(columns=["is_fraud"]).to_parquet(root / "input.parquet", index=False)
        quarter = opts.rows // 4
        frame.head(quarter).drop(columns=["is_fraud"]).to_parquet(root / "quarter.parquet", index=False)
        project = build_project(root / "project", generator.generate(20_000), {
            "fraud": (small_spec_dict(), "logistic_regression", {})})
        registry = str(project.registry.uri)
        del frame
        export = subprocess.run([modelcycle, "export", "fraud@1", "--spec", str(project.specs["fraud"]),
                                 "-o", str(root / "export")], cwd=project.root, capture_output=True, text=True)
        if export.returncode:
            raise SystemExit(export.stderr)
        chunk = str(opts.chunk_rows)

        def predict(source: str, out: str, *extra: str) -> tuple[float, float, float]:
            return run([modelcycle, "predict", "fraud@1", "--input", str(root / source), "--output",
                        str(root / out), "--registry", registry, *extra], cwd=root)

        peer = run([sys.executable, "-c", PEER, registry, str(root / "input.parquet"), str(root / "peer.parquet"),
                    chunk], cwd=root)
        ours = predict("input.parquet", "out.parquet", "--chunk-rows", chunk)
        onnx = predict("input.parquet", "onnx.parquet", "--chunk-rows", chunk, "--engine", "onnx")
        small_chunk = predict("input.parquet", "small.parquet", "--chunk-rows", str(opts.chunk_rows // 4))
        quarter_input = predict("quarter.parquet", "q.parquet", "--chunk-rows", chunk)

    def rate(seconds: float) -> str:
        return f"{opts.rows / seconds:>8,.0f} rows/s"

    print(f"\n{opts.rows:,} rows of the fraud example, logistic regression, Parquet in and out, "
          f"chunks of {opts.chunk_rows:,} rows (wall and CPU time include each process's start; "
          "on a shared machine the CPU ratio is the steadier figure)")
    print(f"  {'':<48} {'wall':>8} {'throughput':>15} {'CPU':>8} {'peak':>8}   vs the script: wall, CPU")
    for label, (wall, peak, cpu) in (("plain script (pipeline.predict_proba per chunk)", peer),
                                     ("modelcycle predict (scikit-learn)", ours),
                                     ("modelcycle predict --engine onnx", onnx)):
        print(f"  {label:<48} {wall:>6.1f} s {rate(wall)} {cpu:>6.1f} s {peak:>5.0f} MB   "
              f"{peer[0] / wall:.2f}x, {peer[2] / cpu:.2f}x")
    print("  target: modelcycle predict (scikit-learn) >= 0.80x the script's throughput")
    print("peak memory follows the chunk, not the input:")
    print(f"  {opts.rows:>9,} rows, chunks of {opts.chunk_rows // 4:>7,}: peak {small_chunk[1]:6.0f} MB")
    print(f"  {opts.rows:>9,} rows, chunks of {opts.chunk_rows:>7,}: peak {ours[1]:6.0f} MB")
    print(f"  {quarter:>9,} rows, chunks of {opts.chunk_rows:>7,}: peak {quarter_input[1]:6.0f} MB")


if __name__ == "__main__":
    importlib.util.find_spec("modelcycle") or sys.exit("run with the project's venv: .venv/bin/python bench/batch.py")
    main()
