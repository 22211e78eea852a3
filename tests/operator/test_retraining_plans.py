"""What the operator's closed loop computes, without a cluster: when the gateway is read next,
what a retraining run's container said, the Job it runs, and a promotion of an alias."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from modelcycle.operator import promotion
from modelcycle.operator.retraining import Monitor, kfp_parameters, next_check, retrain_job, run_outcome

NOW = dt.datetime(2026, 11, 29, 12, 7, 30, tzinfo=dt.UTC)


def _md(**spec) -> dict:
    return {"metadata": {"name": "fraud", "namespace": "models", "uid": "0123456789abcdef", "resourceVersion": "7"},
            "spec": {"model": "fraud", "registry": "s3://ml/registry", "production": {"version": 3}, **spec}}


@pytest.mark.parametrize(("schedule", "last", "due"), [
    ("@every 30s", NOW, NOW + dt.timedelta(seconds=30)),
    ("@every 2m", NOW, NOW + dt.timedelta(minutes=2)),
    ("*/15 * * * *", NOW, NOW.replace(minute=15, second=0)),
    ("0 * * * *", NOW, NOW.replace(hour=13, minute=0, second=0)),
    ("0 * * * *", None, NOW),  # never read: now
])
def test_the_next_check(schedule: str, last: dt.datetime | None, due: dt.datetime) -> None:
    assert next_check(schedule, last, NOW) == due


def test_what_a_run_says() -> None:
    ok = json.dumps({"model_version": "fraud@4", "status": "registered"})
    assert run_outcome(0, ok) == {"outcome": "shadow", "version": 4,
                                  "message": "version 4 passed its gates; it is the shadow"}
    assert run_outcome(0, json.dumps({"model_version": "fraud@4", "status": "rejected"}))["outcome"] == "rejected"
    assert run_outcome(3, json.dumps({"model_version": "fraud@5", "status": "rejected"}))["version"] == 5
    invalid = run_outcome(4, "DataValidationError: 25 rows: amount below 0")
    assert invalid["outcome"] == "invalid_data" and "amount below 0" in invalid["message"]
    assert run_outcome(137, "Killed")["outcome"] == "failed"
    # kwok's fake completion, or any pod that exits 0 without the result line: not over yet.
    assert run_outcome(0, "") is None


def test_the_retraining_job() -> None:
    md = _md(monitoring={"retrain": {"enabled": True, "specConfigMap": "fraud-spec", "storeUri": "s3://ml/data",
                                     "secretName": "ml-train"}})
    job = retrain_job(md, 7, image="modelcycle/modelcycle-python:0.1.0")
    assert job["metadata"]["name"] == "fraud-retrain-7"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    pod = job["spec"]["template"]["spec"]
    container, = pod["containers"]
    assert container["command"][:3] == ["modelcycle", "run", "/etc/modelcycle/spec/modelcycle.yaml"]
    assert container["command"][-4:] == ["--registry", "s3://ml/registry", "--store", "s3://ml/data"]
    assert container["envFrom"] == [{"secretRef": {"name": "ml-train"}}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and job["spec"]["backoffLimit"] == 0
    assert {v["name"]: v for v in pod["volumes"]}["spec"]["configMap"]["name"] == "fraud-spec"
    assert kfp_parameters(md, "name: fraud\n") == {"spec_yaml": "name: fraud\n", "base_dir": "",
                                                   "store_uri": "s3://ml/data", "registry_uri": "s3://ml/registry"}


def test_a_shadow_named_by_alias_is_promoted_as_the_number_it_served() -> None:
    md = _md(shadow={"version": "challenger"})
    patch = promotion.promotion_patch(md, reason="verdict promote", served=["4"])
    assert patch["spec"]["production"] == {"version": 4, "image": None}
    assert json.loads(patch["metadata"]["annotations"][promotion.LAST_PROMOTION])["to"] == "4"
    # Two versions seen (the alias moved during the comparison): nothing to pin it to.
    assert promotion.promotion_patch(md, reason="r", served=["4", "5"])["spec"]["production"]["version"] == "challenger"


class _RefusingClient:
    """A fake API client that refuses every write (as an API server would without the Job RBAC)."""

    async def apply(self, manifest):
        raise RuntimeError("jobs.batch is forbidden: User cannot create resource")

    async def request(self, *args, **kwargs):
        return None


async def test_a_retraining_that_cannot_start_is_said_in_status_and_does_not_stop_the_pass() -> None:
    md = _md(monitoring={"schedule": "@every 1m", "retrain": {"enabled": True, "specConfigMap": "s",
                                                            "storeUri": "s3://ml/data", "minRows": 10}})
    events: list[dict] = []

    async def read_gateway(md, path):
        return {"verdict": "drift", "rows": 50, "reasons": ["prediction drift"]}, None

    async def post_event(md, **event):
        events.append(event)

    monitor = Monitor(client=_RefusingClient(), image="modelcycle/modelcycle-python:0.1.0",
                      read_gateway=read_gateway, post_event=post_event)
    found = await monitor.check(md, NOW)
    assert found.drifted[:2] == ("True", "DataDrift")
    assert "cannot start a retraining: jobs.batch is forbidden" in found.monitoring["error"]
    assert found.retraining is None  # no attempt recorded: the next check tries again
    assert [e["reason"] for e in events] == ["DriftDetected"]
