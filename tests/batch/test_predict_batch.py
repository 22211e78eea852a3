"""`modelcycle predict MODEL@ALIAS --input URL --output URL`: every record predicted or rejected
with its reasons, in chunks, resumable without duplicates."""

import json
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest

from export.trained import modelcycle
from modelcycle.batch import check_records, predict_batch
from modelcycle.cli import EXIT_INVALID_DATA
from modelcycle.serving.requests import InvalidRequest, RecordChecker


@pytest.fixture(scope="module")
def transactions(project_dir) -> pd.DataFrame:
    return pd.read_parquet(project_dir.root / "data" / "transactions.parquet")


def test_parquet_in_parquet_out_every_record_with_the_models_answer(project_dir, transactions, tmp_path):
    done = modelcycle("predict", "fraud@1", "--input", "data/transactions.parquet", "--output", str(tmp_path / "p.parquet"),
                      "--chunk-rows", "700", cwd=project_dir.root)
    assert done.returncode == 0, done.stderr
    out = pd.read_parquet(tmp_path / "p.parquet")
    model = project_dir.registry.load("fraud", 1)
    assert list(out.columns) == ["transaction_id", "prediction", "probability_0", "probability_1", "model",
                                 "model_version", "predicted_at"]
    assert out["transaction_id"].tolist() == transactions["transaction_id"].tolist()
    proba = model.predict_proba(transactions)
    np.testing.assert_allclose(out[["probability_0", "probability_1"]].to_numpy(), proba)
    assert out["prediction"].tolist() == model.decide(proba).tolist()
    assert set(out["model_version"]) == {"1"} and out["predicted_at"].nunique() == 1
    assert not (tmp_path / "p.rejects.jsonl").exists()


def broken(transactions: pd.DataFrame) -> pd.DataFrame:
    """Three bad records among good ones: rows 3 (two bad fields), 10 and 2500."""
    frame = transactions.astype({"amount": object, "ts": object})
    frame.loc[3, ["channel", "amount"]] = ["fax", "lots"]
    frame.loc[10, "customer_age"] = 7
    frame.loc[2500, "ts"] = "yesterday"
    return frame


def test_bad_records_go_to_the_rejects_file_with_a_reason_per_field(project_dir, transactions, tmp_path):
    broken(transactions).to_csv(tmp_path / "in.csv", index=False)
    project_dir.registry.set_alias("fraud", "champion", 1)
    done = modelcycle("predict", "fraud@champion", "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path / "out.csv"), "--chunk-rows", "1000", cwd=project_dir.root)
    assert done.returncode == EXIT_INVALID_DATA, done.stderr
    assert "3 rejected" in done.stdout
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == len(transactions) - 3
    assert not {"tx-7-00000003", "tx-7-00000010", "tx-7-00002500"} & set(out["transaction_id"])
    rejects = [json.loads(line) for line in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["id"]) for r in rejects] == [(3, "tx-7-00000003"), (10, "tx-7-00000010"),
                                                      (2500, "tx-7-00002500")]
    assert rejects[0]["errors"] == [
        {"field": "amount", "reason": 'expected a number, found "lots"'},
        {"field": "channel", "reason": "expected one of 'pos', 'online', 'atm', found \"fax\""},
    ]
    assert rejects[1]["errors"] == [{"field": "customer_age", "reason": "expected a number >= 18 and <= 120, found 7.0"}]
    assert rejects[2]["errors"][0]["field"] == "ts" and "expected a date" in rejects[2]["errors"][0]["reason"]
    assert rejects[0]["record"]["channel"] == "fax"


def test_the_batch_checks_are_the_bentos_checks(project_dir, transactions):
    """Every record the batch rejects, the bento refuses, naming one of the same fields; every
    record it passes, the bento passes."""
    schema = project_dir.registry.load("fraud", 1).schema
    frame = broken(transactions).head(40).copy()
    frame.loc[20, "amount"] = math.inf
    frame.loc[21, "channel"] = None
    frame.loc[22, "tx_last_24h"] = -1
    ok, problems = check_records(frame, schema)
    assert (~ok).sum() == len(problems) == 5
    checker = RecordChecker(schema)
    sent = json.loads(frame.astype(object).where(frame.notna(), None).to_json(orient="records", date_format="iso"))
    sent[20]["amount"] = math.inf
    found = iter(problems)
    for row, record in enumerate(sent):
        if ok[row]:
            checker.check([record])
            continue
        with pytest.raises(InvalidRequest) as refused:
            checker.check([record])
        assert refused.value.field in {p["field"] for p in next(found)}


def test_a_regression_from_json_lines(project_dir, transactions, tmp_path):
    transactions.to_json(tmp_path / "in.jsonl", orient="records", lines=True, date_format="iso")
    done = modelcycle("predict", "amount@1", "--input", str(tmp_path / "in.jsonl"), "--output",
                      str(tmp_path / "out.jsonl"), cwd=project_dir.root)
    assert done.returncode == 0, done.stderr
    out = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert list(out.columns) == ["transaction_id", "prediction", "model", "model_version", "predicted_at"]
    expected = project_dir.registry.load("amount", 1).predict(transactions)
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-9)


def test_sql_through_sqlalchemy(project_dir, transactions, tmp_path):
    db = tmp_path / "tx.db"
    with sqlite3.connect(db) as conn:
        transactions.head(1500).assign(ts=transactions["ts"].astype(str)).to_sql("tx", conn, index=False)
    result = predict_batch(project_dir.registry, "fraud", 1,
                           source=_sql(f"sqlite:///{db}", "SELECT * FROM tx WHERE channel = 'online'"),
                           output=str(tmp_path / "out.parquet"), chunk_rows=400)
    online = transactions.head(1500).query("channel == 'online'")
    assert result.rows == result.predicted == len(online) and result.chunks == math.ceil(len(online) / 400)
    assert pd.read_parquet(tmp_path / "out.parquet")["transaction_id"].tolist() == online["transaction_id"].tolist()


def _sql(url, query):
    from modelcycle.spec import SqlSource

    return SqlSource(url=url, query=query)


class Interrupted(Exception):
    """A fake crash, raised from the progress callback: a real one cannot be produced on demand."""


def test_a_rerun_resumes_and_never_duplicates_rows(project_dir, transactions, tmp_path):
    source = str(tmp_path / "in.csv")
    broken(transactions).to_csv(source, index=False)
    output = str(tmp_path / "out.parquet")

    def crash_after_two_chunks(rows, total):
        if rows >= 1000:
            raise Interrupted

    with pytest.raises(Interrupted):
        predict_batch(project_dir.registry, "fraud", 1, source=source, output=output, chunk_rows=500,
                      on_chunk=crash_after_two_chunks)
    assert not (tmp_path / "out.parquet").exists()
    resumed = predict_batch(project_dir.registry, "fraud", 1, source=source, output=output, chunk_rows=500)
    assert resumed.resumed_chunks == 2 and resumed.chunks == 8
    first = pd.read_parquet(output)
    again = predict_batch(project_dir.registry, "fraud", 1, source=source, output=output, chunk_rows=500)
    assert again.resumed_chunks == 0
    second = pd.read_parquet(output)
    for out, result in ((first, resumed), (second, again)):
        assert len(out) == out["transaction_id"].nunique() == len(transactions) - 3
        assert result.rejected == 3
        assert len((tmp_path / "out.rejects.jsonl").read_text().splitlines()) == 3
    pd.testing.assert_frame_equal(first.drop(columns="predicted_at"), second.drop(columns="predicted_at"))
    assert not (tmp_path / "out.parquet.parts").exists()


def test_the_onnx_engine_answers_as_the_pipeline(project_dir, transactions, tmp_path):
    done = modelcycle("export", "fraud@1", "--spec", str(project_dir.specs["fraud"]), "-o", str(tmp_path / "x"),
                      cwd=project_dir.root)
    assert done.returncode == 0, done.stderr
    sklearn = predict_batch(project_dir.registry, "fraud", 1, source=str(project_dir.root / "data" / "transactions.parquet"),
                            output=str(tmp_path / "sk.parquet"), chunk_rows=1000)
    onnx = predict_batch(project_dir.registry, "fraud", 1, source=str(project_dir.root / "data" / "transactions.parquet"),
                         output=str(tmp_path / "onnx.parquet"), chunk_rows=1000, engine="onnx")
    assert (sklearn.engine, onnx.engine) == ("sklearn", "onnx")
    a, b = pd.read_parquet(tmp_path / "sk.parquet"), pd.read_parquet(tmp_path / "onnx.parquet")
    np.testing.assert_allclose(a["probability_1"], b["probability_1"], atol=1e-4)
    assert (a["prediction"] == b["prediction"]).mean() > 0.999


def test_the_onnx_engine_needs_an_export(project_dir, tmp_path):
    done = modelcycle("predict", "amount@1", "--input", "data/transactions.parquet", "--output",
                      str(tmp_path / "o.csv"), "--engine", "onnx", cwd=project_dir.root)
    assert done.returncode == 2 and "has no ONNX export" in done.stderr


def test_a_sql_password_comes_from_the_environment_never_the_url(project_dir, tmp_path):
    done = modelcycle("predict", "fraud@1", "--input", "postgresql://reader:s3cret@db/sales", "--query", "SELECT 1",
                      "--output", str(tmp_path / "o.csv"), cwd=project_dir.root)
    assert done.returncode == 2
    assert "password_env" in done.stderr and "s3cret" not in done.stderr + done.stdout
    done = modelcycle("predict", "fraud@1", "--input", "postgresql://reader@db/sales", "--query", "SELECT 1",
                      "--password-env", "MODELCYCLE_TEST_UNSET_PASSWORD", "--output", str(tmp_path / "o.csv"),
                      cwd=project_dir.root)
    assert done.returncode == 2 and "MODELCYCLE_TEST_UNSET_PASSWORD is not set" in done.stderr
