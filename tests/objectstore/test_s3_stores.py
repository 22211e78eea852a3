"""The data store and the registry on a real S3 server (SeaweedFS, started by the
`object_store` fixture), through the same s3:// URLs and AWS_* variables a cluster uses."""

import json

import pandas as pd
import pytest
import s3fs

from modelcycle.data import DataError, DataStore
from modelcycle.registry import ArtifactIntegrityError, Registry


def _frame(n: int = 50, shift: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"id": range(n), "amount": [float(i + shift) for i in range(n)],
                         "channel": ["web", "app"] * (n // 2)})


def test_data_versions_on_s3_are_content_addressed_with_lineage(bucket):
    store = DataStore(f"{bucket}/data")
    first = store.snapshot(_frame(), source="s3://raw/tx.parquet")
    again = DataStore(f"{bucket}/data").snapshot(_frame(), source="s3://raw/tx.parquet")  # another handle
    second = store.snapshot(_frame(shift=1), source="s3://raw/tx.parquet")

    assert again.id == first.id and again.created_at == first.created_at  # the same content is not written twice
    assert second.parent == first.id
    assert first.path == f"{bucket}/data/{first.id}"
    pd.testing.assert_frame_equal(store.load(first.short_id), _frame())
    assert [v.id for v in store.versions()] == [first.id, second.id]
    assert [e["id"] for e in store.lineage()] == [first.id, first.id, second.id]

    store.attach(second.id, "schema.json", '{"columns": []}')
    assert json.loads(store.attachment(second.id, "schema.json")) == {"columns": []}
    store.mark_invalid(second.id, "{}")
    with pytest.raises(DataError, match="marked invalid"):
        store.load(second.id)
    store.mark_valid(second.id)
    assert len(store.load(second.id)) == 50


def test_a_tampered_snapshot_on_s3_is_refused(bucket, s3_env):
    store = DataStore(f"{bucket}/data")
    version = store.snapshot(_frame(), source="x")
    _frame(10).to_parquet(f"{bucket}/data/{version.id}/data.parquet", index=False)
    with pytest.raises(DataError, match="sha256"):
        store.load(version.id)


def test_a_half_written_version_is_invisible(bucket):
    store = DataStore(f"{bucket}/data")
    s3fs.S3FileSystem().pipe_file(f"{bucket}/data/{'ab' * 32}/data.parquet", b"partial")  # crashed before its manifest
    assert store.versions() == []
    with pytest.raises(DataError, match="not found"):
        store.get("abababab")


@pytest.mark.parametrize("ref", ["../other", "*", "abc", "ab/cd" * 4, "ABCDEF12"])
def test_refs_that_could_name_another_place_are_refused(bucket, ref):
    with pytest.raises(DataError, match="expected a version id"):
        DataStore(f"{bucket}/data").get(ref)


def test_attachment_names_cannot_leave_the_version(bucket):
    store = DataStore(f"{bucket}/data")
    version = store.snapshot(_frame(), source="x")
    for name in ("../escape.json", ".hidden", "a/b", "*.json"):
        with pytest.raises(DataError, match="attachment name"):
            store.attach(version.id, name, "{}")


def test_registry_on_s3(bucket):
    registry = Registry(f"{bucket}/registry")
    first = registry.register("fraud", {"weights": [1]}, lineage={"data_version": "d1"}, params={}, metrics={})
    second = registry.register("fraud", {"weights": [2]}, lineage={"parent_version": 1}, params={}, metrics={})
    registry.set_alias("fraud", "champion", second.version)

    reader = Registry(f"{bucket}/registry")
    assert (first.version, second.version) == (1, 2)
    assert reader.get("fraud", "champion").version == 2
    assert reader.load("fraud", "champion") == {"weights": [2]}
    assert second.artifact_uri == f"{bucket}/registry/fraud/versions/2/model.joblib"
    s3fs.S3FileSystem().pipe_file(second.artifact_uri, b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        Registry(f"{bucket}/registry").load("fraud", 2)
