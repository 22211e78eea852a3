"""Ingest writes immutable, content-addressed snapshots with lineage."""

import sqlite3

import pandas as pd
import pytest

from modelcycle.data import DataError, DataStore, content_id, ingest
from modelcycle.spec import DataSpec, SqlSource


def test_same_content_same_version_whatever_the_format(tmp_path, fraud_frame):
    fraud_frame.to_parquet(tmp_path / "a.parquet", index=False)
    fraud_frame.to_csv(tmp_path / "a.csv", index=False)
    store = DataStore(tmp_path / "store")
    v1 = ingest(DataSpec(source=str(tmp_path / "a.parquet"), target="is_fraud"), store=store)
    v2 = ingest(DataSpec(source=str(tmp_path / "a.parquet"), target="is_fraud"), store=store)
    assert v1.id == v2.id
    assert len(store.versions()) == 1
    assert v1.rows == len(fraud_frame)
    pd.testing.assert_frame_equal(store.load(v1.id), fraud_frame)


def test_new_content_gets_new_version_with_parent(tmp_path, fraud_frame):
    src = tmp_path / "tx.parquet"
    store = DataStore(tmp_path / "store")
    fraud_frame.to_parquet(src, index=False)
    first = ingest(DataSpec(source=str(src), target="is_fraud"), store=store)
    fraud_frame.iloc[:100].to_parquet(src, index=False)
    second = ingest(DataSpec(source=str(src), target="is_fraud"), store=store)
    assert second.id != first.id
    assert second.parent == first.id
    assert first.parent is None
    assert store.get(second.short_id).rows == 100


def test_content_id_ignores_index_but_not_values(fraud_frame):
    shuffled_index = fraud_frame.set_axis(range(10, 10 + len(fraud_frame)))
    assert content_id(fraud_frame) == content_id(shuffled_index)
    changed = fraud_frame.copy()
    changed.loc[0, "amount"] += 0.01
    assert content_id(changed) != content_id(fraud_frame)


def test_tampered_snapshot_is_refused(tmp_path, fraud_frame):
    store = DataStore(tmp_path)
    version = store.snapshot(fraud_frame, source="test")
    fraud_frame.iloc[:10].to_parquet(tmp_path / version.id / "data.parquet", index=False)
    with pytest.raises(DataError, match="sha256"):
        store.load(version.id)


def test_sql_source(tmp_path, fraud_frame):
    db = tmp_path / "tx.db"
    with sqlite3.connect(db) as conn:
        fraud_frame.drop(columns=["ts"]).to_sql("tx", conn, index=False)
    spec = DataSpec(source=SqlSource(url=f"sqlite:///{db}", query="select * from tx where amount > 10"), target="is_fraud")
    version = ingest(spec, store=DataStore(tmp_path / "store"))
    assert version.rows == int((fraud_frame.amount > 10).sum())
    assert version.source.startswith("sql:sqlite:///")


def test_clear_errors(tmp_path, fraud_frame):
    store = DataStore(tmp_path / "store")
    with pytest.raises(DataError, match="no file at"):
        ingest(DataSpec(source=str(tmp_path / "missing.csv"), target="y"), store=store)
    fraud_frame.to_parquet(tmp_path / "a.parquet", index=False)
    with pytest.raises(DataError, match=r"column\(s\) label named in the spec are not in the source"):
        ingest(DataSpec(source=str(tmp_path / "a.parquet"), target="label"), store=store)
    with pytest.raises(DataError, match="not found"):
        store.get("abcdef0123")
