"""The compiled pipeline with each task in its own container of the modelcycle image
(kfp.local.DockerRunner over podman's Docker API), sharing nothing but KFP artifacts and
parameters: the data source, the data store and the registry are on a real S3 server.

The containers use the host's network, so that 127.0.0.1 (where the test's SeaweedFS
listens) is the same address inside and out; a cluster would use a Service name instead.
They run as the image's non-root user; the pipeline root they write to is world-writable
with the sticky bit, like /tmp, the way a bind mount is made writable for another uid.
The register task signs with a key given in its environment (``MODELCYCLE_SIGNING_KEY``,
the PEM text, as a Secret's key set as a variable would be), like the S3 credentials."""

import json
import uuid
from datetime import UTC, datetime

import pytest
import yaml
from kfp import local

from fraud_example import small_spec_dict
from modelcycle import signing
from modelcycle.cluster.images import PYTHON_IMAGE
from modelcycle.pipelines import run_local
from modelcycle.registry import Registry


def _container_starts(engine, since: str, label: str) -> list[dict]:
    """The starts of containers labelled `label` (tests running beside this one start
    containers of the same image)."""
    out = engine.run("events", "--stream=false", "--since", since, "--filter", "event=start",
                     "--filter", "type=container", "--filter", f"label={label}", "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.slow
def test_pipeline_runs_each_task_in_a_container_on_object_storage(container_engine, docker_host, bucket, object_store,
                                                                 fraud_frame, tmp_path, monkeypatch):
    if container_engine.name != "podman":
        pytest.fail("this test reads podman's events; with Docker, count `docker events` instead", pytrace=False)
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    source = f"{bucket}/raw/transactions.parquet"
    fraud_frame.to_parquet(source, index=False)
    spec = small_spec_dict()
    spec["data"]["source"] = source
    spec["goal"] = {"primary": {"metric": "accuracy", "min": 0.5}}  # a gate 4,000 rows can pass
    spec_path = tmp_path / "modelcycle.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    workdir = tmp_path / "work"

    key = signing.new_key(tmp_path / "signing-key")
    monkeypatch.setenv(signing.KEY_ENV, str(tmp_path / "signing-key"))  # the SubprocessRunner's tasks inherit it
    pem = (tmp_path / "signing-key").read_text()

    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    run_id = uuid.uuid4().hex
    runner = local.DockerRunner(network_mode="host", environment={**object_store.env, signing.KEY_ENV: pem},
                                labels={"modelcycle-test": run_id})
    result = run_local(spec_path, workdir=workdir, store_uri=f"{bucket}/data", registry_uri=f"{bucket}/registry",
                       runner=runner)

    starts = [e for e in _container_starts(container_engine, since, f"modelcycle-test={run_id}")
              if PYTHON_IMAGE in e.get("Image", "")]
    candidates = len(spec["training"]["candidates"])
    # plan, ingest, validate, one train per candidate, evaluate, register: each its own container
    assert len(starts) == 5 + candidates, starts
    assert len({e["ID"] for e in starts}) == len(starts)

    registry = Registry(f"{bucket}/registry")
    champion = registry.get(spec["name"], "champion")
    assert result.model_version == f"{champion.name}@{champion.version}"
    assert champion.artifact_uri.startswith(f"{bucket}/registry/")
    assert champion.lineage.data_uri == f"{bucket}/data/{champion.lineage.data_version}"
    assert not list(workdir.glob("data")) and not list(workdir.glob("registry"))  # nothing beside the buckets
    assert champion.signature.key_id == signing.key_id(key.public_key())  # signed in its container
    assert registry.load(champion.name, champion.version).schema is not None  # and it verifies here

    # The same spec through the SubprocessRunner (one shared filesystem) gives the same model.
    local_run = run_local(spec_path, workdir=tmp_path / "subprocess", store_uri=f"{bucket}/data-subprocess",
                          registry_uri=f"{bucket}/registry-subprocess")
    twin = Registry(f"{bucket}/registry-subprocess").get(*local_run.model_version.split("@"))
    assert twin.signature.key_id == champion.signature.key_id
    assert twin.lineage.data_version == champion.lineage.data_version
    assert twin.params == champion.params
    for key, value in champion.metrics.items():
        if not key.startswith("latency."):
            assert twin.metrics[key] == pytest.approx(value, abs=1e-9), key
