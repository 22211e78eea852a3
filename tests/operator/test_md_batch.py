"""A scheduled batch (`spec.batch`): the operator's CronJob, a run started with `kubectl create
job --from=cronjob/...`, and the run's figures in `status.batch.lastRun`, on the real control
plane with kwok nodes and the real operator process.

kwok fakes pods: it marks a Job's pod Succeeded at once and runs nothing. So the test runs the
pod's container itself, as a local process: the command and environment read back from the
pod the Job controller created (the Secret named by `envFrom` resolved the way the kubelet
does, the termination-message file a local file instead of the kubelet's mount), against a
registry on disk and input and output in a real S3 store. Then it writes what the kubelet
would write into the fake pod's status: the container terminated with the process's exit
code and the file's content as its message. (A real kubelet would also set the pod's phase
to Failed for exit code 4; kwok has already set Succeeded, a phase that cannot change, and
the operator reads only the container's state.)
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest
import yaml
from export.trained import build_project
from fraud_example import small_spec_dict
from modeldeployments import ModelDeployments, OperatorProcess, base_spec, terminate_fake_pod, wait_for
from test_md_chart import CHART, helm

from modelcycle.cli import EXIT_INVALID_DATA
from modelcycle.cluster import Cluster, KubectlError
from modelcycle.cluster.objectstore import ObjectStore

pytestmark = pytest.mark.cluster

MODELCYCLE = Path(sys.executable).with_name("modelcycle")


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory, fraud_frame: pd.DataFrame) -> Path:
    """A registry with `fraud` version 1, trained in-process."""
    project = build_project(tmp_path_factory.mktemp("batch-project"), fraud_frame,
                            {"fraud": (small_spec_dict(), "logistic_regression", {})})
    return project.root / ".modelcycle" / "registry"


def _kubectl_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def _run_like_the_kubelet(cluster: Cluster, namespace: str, pod: dict[str, Any], tmp_path: Path) -> tuple[int, str]:
    """Run the pod's only container as a local process; (exit code, termination message)."""
    container, = pod["spec"]["containers"]
    env = {"PATH": os.environ["PATH"]}
    for source in container.get("envFrom") or []:
        secret = _kubectl_json(cluster, "get", "secret", source["secretRef"]["name"], "-n", namespace)
        env.update({key: base64.b64decode(value).decode() for key, value in secret["data"].items()})
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    for item in container.get("env") or []:
        value = item["value"]
        env[item["name"]] = str(termination_log) if value == container["terminationMessagePath"] else value
    env["TMPDIR"] = env["HOME"] = str(tmp_path)  # the pod's /tmp emptyDir
    command = [str(MODELCYCLE) if container["command"][0] == "modelcycle" else container["command"][0],
               *container["command"][1:], *(container.get("args") or [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    message = termination_log.read_text()
    if not message and done.returncode != 0:  # terminationMessagePolicy: FallbackToLogsOnError
        message = (done.stdout + done.stderr)[-2048:]
    return done.returncode, message


def _last_run(mds: ModelDeployments, exit_code: int) -> dict[str, Any] | None:
    """status.batch.lastRun once it shows the run's exit code: before the test's write, kwok's
    fake completion (exit code 0, no message) may show there for a moment."""
    last = ((mds.get("fraud").get("status") or {}).get("batch") or {}).get("lastRun")
    return last if last and last["exitCode"] == exit_code else None


def test_a_run_of_the_cronjob_reports_rows_and_rejects_in_status(
    control_plane: Cluster, namespace: str, mds: ModelDeployments, operator: OperatorProcess,
    registry_dir: Path, bucket: str, object_store: ObjectStore, fraud_frame: pd.DataFrame, tmp_path: Path,
) -> None:
    frame = fraud_frame.head(600).copy()
    frame.loc[[5, 400], "customer_age"] = 7  # two records the schema rejects: below the youngest customer
    with fsspec.open(f"{bucket}/in/tx.parquet", "wb") as fh:
        frame.to_parquet(fh, index=False)
    control_plane.kubectl("create", "secret", "generic", "s3", "-n", namespace,
                          *(f"--from-literal={key}={value}" for key, value in object_store.env.items()))
    batch = {"schedule": "0 3 * * *", "input": f"{bucket}/in/tx.parquet", "output": f"{bucket}/out/scores.parquet",
             "registry": str(registry_dir), "secretName": "s3", "resources": {"limits": {"memory": "1Gi"}}}
    mds.apply("fraud", base_spec(production={"version": 1, "image": "fraud:1-abc"}, batch=batch))
    md = mds.get("fraud")

    cronjob = wait_for(lambda: (mds.children("cronjobs", "fraud") or [None])[0], what="the CronJob fraud-batch")
    assert cronjob["metadata"]["name"] == "fraud-batch"
    owner, = cronjob["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", md["metadata"]["uid"], True)
    assert cronjob["spec"]["schedule"] == "0 3 * * *" and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job_spec = cronjob["spec"]["jobTemplate"]["spec"]
    pod_spec = job_spec["template"]["spec"]
    container, = pod_spec["containers"]
    assert container["image"] == "modelcycle/modelcycle-python:0.1.0"
    assert container["command"] == ["modelcycle", "predict", "fraud@1", "--input", batch["input"],
                                    "--output", batch["output"], "--registry", str(registry_dir)]
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["resources"] == {"limits": {"memory": "1Gi"}}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod_spec["restartPolicy"] == "Never"
    assert job_spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [EXIT_INVALID_DATA]
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(md), "no credentials in the resource"

    started = dt.datetime.now(dt.UTC)
    control_plane.kubectl("create", "job", "--from=cronjob/fraud-batch", "fraud-batch-now", "-n", namespace)
    pod = wait_for(lambda: next(iter(_kubectl_json(control_plane, "get", "pods", "-n", namespace, "-l",
                                                   "job-name=fraud-batch-now")["items"]), None),
                   what="the Job's pod")
    assert pod["spec"]["containers"][0]["command"] == container["command"]
    pod = wait_for(lambda: (lambda p: p if p.get("status", {}).get("containerStatuses") else None)(
        _kubectl_json(control_plane, "get", "pod", pod["metadata"]["name"], "-n", namespace)), what="kwok's pod status")

    exit_code, message = _run_like_the_kubelet(control_plane, namespace, pod, tmp_path)
    assert exit_code == EXIT_INVALID_DATA, message
    summary = json.loads(message)
    assert (summary["rows"], summary["predicted"], summary["rejected"]) == (600, 598, 2)
    out = pd.read_parquet(f"{bucket}/out/scores.parquet")
    assert len(out) == 598 and set(out["model_version"]) == {"1"}
    assert json.loads(fsspec.open(f"{bucket}/out/scores.summary.json", "r").open().read()) == summary
    terminate_fake_pod(control_plane, namespace, pod, exit_code, message, started)

    last = wait_for(lambda: _last_run(mds, exit_code), what="status.batch.lastRun of the run")
    assert last["job"] == "fraud-batch-now" and last["exitCode"] == EXIT_INVALID_DATA and last["succeeded"] is False
    assert (last["rows"], last["predicted"], last["rejected"], last["version"]) == (600, 598, 2, "1")
    assert last["durationSeconds"] == summary["seconds"] > 0
    assert mds.get("fraud")["status"]["batch"]["schedule"] == "0 3 * * *"
    wait_for(lambda: [e for e in mds.events("fraud") if e["reason"] == "BatchRun" and e["type"] == "Warning"
                      and "598 of 600 records predicted, 2 rejected" in e["message"]], what="the BatchRun Event")
    wide = control_plane.kubectl("get", "md", "fraud", "-n", namespace, "-o", "wide").stdout
    assert "LAST-BATCH" in wide.splitlines()[0] and "BATCH-REJECTED" in wide.splitlines()[0], wide

    mds.patch("fraud", {"spec": {"batch": None}})
    wait_for(lambda: not mds.children("cronjobs", "fraud"), what="the CronJob deleted with spec.batch")
    wait_for(lambda: "batch" not in (mds.get("fraud").get("status") or {}), what="status.batch gone")
    assert "forbidden" not in operator.log.read_text().lower(), operator.tail()


def test_a_run_that_fails_before_its_summary_reports_its_log(
    control_plane: Cluster, namespace: str, mds: ModelDeployments, operator: OperatorProcess,
    registry_dir: Path, tmp_path: Path,
) -> None:
    """No input file: `modelcycle predict` exits 2 with the reason, which Kubernetes puts in the
    termination message (FallbackToLogsOnError), and status shows it."""
    batch = {"schedule": "*/5 * * * *", "input": str(tmp_path / "missing.csv"), "output": str(tmp_path / "out.csv"),
             "registry": str(registry_dir), "version": "1", "suspend": True}
    mds.apply("fraud", base_spec(batch=batch))
    cronjob = wait_for(lambda: (mds.children("cronjobs", "fraud") or [None])[0], what="the CronJob fraud-batch")
    assert cronjob["spec"]["suspend"] is True
    control_plane.kubectl("create", "job", "--from=cronjob/fraud-batch", "by-hand", "-n", namespace)
    pod = wait_for(lambda: next((p for p in _kubectl_json(control_plane, "get", "pods", "-n", namespace, "-l",
                                                          "job-name=by-hand")["items"]
                                 if p.get("status", {}).get("containerStatuses")), None), what="the Job's pod")
    started = dt.datetime.now(dt.UTC)
    exit_code, message = _run_like_the_kubelet(control_plane, namespace, pod, tmp_path)
    assert exit_code == 2 and "no file at" in message
    terminate_fake_pod(control_plane, namespace, pod, exit_code, message, started)

    last = wait_for(lambda: _last_run(mds, exit_code), what="status.batch.lastRun of the run")
    assert last["exitCode"] == 2 and last["succeeded"] is False and "rows" not in last
    assert "no file at" in last["message"] and "missing.csv" in last["message"]
    assert mds.get("fraud")["status"]["batch"]["suspended"] is True


BATCH = {"schedule": "0 3 * * *", "input": "s3://b/in.parquet", "output": "s3://b/out.parquet",
         "registry": "s3://b/registry"}


@pytest.mark.parametrize(
    ("batch", "name", "says"),
    [
        ({**BATCH, "schedule": "every night"}, "fraud", "spec.batch.schedule"),
        ({**BATCH, "secretName": "S3 Keys"}, "fraud", "spec.batch.secretName"),
        ({key: value for key, value in BATCH.items() if key != "registry"}, "fraud", "spec.batch.registry"),
        (BATCH, "m" * 47, "at most 46 characters with spec.batch"),
    ],
    ids=["schedule", "secret-name", "registry-required", "name-too-long-for-the-cronjob"],
)
def test_invalid_batch_is_rejected_with_the_field(mds: ModelDeployments, batch: dict, name: str, says: str) -> None:
    with pytest.raises(KubectlError) as caught:
        mds.apply(name, base_spec(batch=batch))
    assert says in caught.value.stderr, caught.value.stderr


def _explain(cluster: Cluster, field: str) -> str:
    """`kubectl explain`, once the API server publishes the CRD's schema (seconds after install)."""
    done = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(cluster.kubectl("explain", field, check=False)),
                    what=f"kubectl explain {field}")
    return " ".join(done.stdout.split())


def test_kubectl_explain_teaches_the_batch(mds: ModelDeployments) -> None:
    explained = _explain(mds.cluster, "modeldeployment.spec.batch")
    assert "`modelcycle predict MODEL@VERSION --input INPUT" in explained, explained
    assert "kubectl create job --from=cronjob/<name>-batch" in explained, explained
    secret = _explain(mds.cluster, "modeldeployment.spec.batch.secretName")
    assert "Credentials never go in this resource" in secret, secret


def test_a_schedule_the_cronjob_refuses_shows_in_ready(mds: ModelDeployments, operator: OperatorProcess) -> None:
    """The pattern lets through a well-formed but impossible schedule; the API server refuses
    the CronJob, and Ready says so while production is still applied."""
    mds.apply("fraud", base_spec(batch={**BATCH, "schedule": "99 * * * *"}))
    ready = mds.wait_condition("fraud", "Ready", "False", reason="ReconcileFailed", timeout=30)
    assert "CronJob" in ready["message"] and "schedule" in ready["message"], ready["message"]
    assert {d["metadata"]["name"] for d in mds.children("deployments", "fraud")} >= {"fraud-production"}
    mds.patch("fraud", {"spec": {"batch": {"schedule": "0 3 * * *"}}})
    mds.wait_condition("fraud", "Ready", timeout=30)
    assert mds.children("cronjobs", "fraud")[0]["spec"]["schedule"] == "0 3 * * *"


def test_the_operator_runs_a_batch_with_only_the_charts_rbac(
    control_plane: Cluster, namespace: str, mds: ModelDeployments, tmp_path: Path
) -> None:
    """The real operator, authenticated as the chart's ServiceAccount, applies the CronJob,
    watches the runs' pods and fills status.batch.lastRun (here from kwok's fake completion),
    and may not read Secrets or create pods (Jobs only for retraining)."""
    helm(control_plane, "install", "mcb", str(CHART), "--namespace", namespace, "--wait=false")
    try:
        account = f"system:serviceaccount:{namespace}:mcb-modelcycle-operator"
        can = lambda verb, resource: control_plane.kubectl(  # noqa: E731
            "auth", "can-i", verb, resource, "-n", namespace, "--as", account, check=False).stdout.strip() == "yes"
        assert can("patch", "cronjobs.batch") and can("watch", "pods")
        # Jobs: the retraining runs of spec.monitoring.retrain; never pods, never Secrets read.
        assert not can("get", "secrets") and can("create", "jobs.batch") and not can("delete", "jobs.batch")
        assert not can("create", "pods")
        token = control_plane.kubectl("create", "token", "mcb-modelcycle-operator", "-n", namespace).stdout.strip()
        config = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
        config["users"] = [{"name": "operator", "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = "operator"
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
        as_operator = Cluster(kubeconfig=tmp_path / "kubeconfig", kubectl_cache_dir=tmp_path / "kubectl-cache")
        process = OperatorProcess(as_operator, namespace, tmp_path / "operator.log").start()
        try:
            mds.apply("fraud", base_spec(batch=BATCH))
            wait_for(lambda: mds.children("cronjobs", "fraud"), what="the CronJob fraud-batch")
            control_plane.kubectl("create", "job", "--from=cronjob/fraud-batch", "now", "-n", namespace)
            last = wait_for(lambda: _last_run(mds, 0), what="status.batch.lastRun", timeout=40)
            assert last["job"] == "now"
        finally:
            process.stop()
        assert "forbidden" not in process.log.read_text().lower(), process.tail()
    finally:
        helm(control_plane, "uninstall", "mcb", "--namespace", namespace, "--wait=false")
