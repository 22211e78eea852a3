"""The closed loop on Kubernetes, on the local control plane with the real operator process:
drifted traffic through a real gateway, then the Drifted condition and its Events, then a
retraining Job with the right command; the Job's pod played in the container engine; the
version it registers becomes the shadow; mirrored traffic; the promotion gate promotes it.

kwok runs no container, so the test plays what the cluster would run. The retraining Job's
pod runs in podman (or Docker) from the modelcycle image `make images` built, with the
command, user, environment and volumes read back from the pod the Job controller made, and
the test writes what the kubelet would into the pod's status (see test_md_batch.py). The
model servers (`python -m modelcycle.serving.model_server`, what the operator renders for a
side without an image) and the gateway run as local processes with the same commands.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from fraud_example import load_generator, small_spec_dict
from modeldeployments import ModelDeployments, OperatorProcess, free_port, terminate_fake_pod, wait_for

from modelcycle import signing
from modelcycle.cluster import Cluster
from modelcycle.cluster.containers import engine
from modelcycle.operator.retraining import SPEC_KEY, SPEC_MOUNT
from modelcycle.serving.local import ServerProcess, start_process, stop_process, wait_ready

pytestmark = pytest.mark.cluster

POLICY = {"minRequests": 40, "minAgreement": 0.5, "maxLatencyRatio": 5, "maxErrorRate": 0.2}
BIN = Path(sys.executable).parent


def _serve(registry: Path, model: str, tmp_path: Path, role: str) -> ServerProcess:
    port = free_port()
    server = start_process(role, [sys.executable, "-m", "modelcycle.serving.model_server", "--registry",
                                  str(registry), "--model", model, "--host", "127.0.0.1", "--port", str(port)],
                           url=f"http://127.0.0.1:{port}", log=tmp_path / f"{role}.log",
                           env={**os.environ, "BENTOML_HOME": str(tmp_path / role / "bentoml")})
    wait_ready(server)
    return server


def _gateway(registry: Path, model: str, production: ServerProcess, tmp_path: Path, *,
             shadow: ServerProcess | None = None) -> ServerProcess:
    port = free_port()
    pairing = "v" + model.rpartition("@")[2] + ("-shadow" if shadow else "")
    command = [sys.executable, "-m", "modelcycle.serving.gateway", "--production-url", production.url,
               "--log-dir", str(tmp_path / "predictions" / pairing), "--port", str(port), "--flush-interval", "0.1",
               "--registry", str(registry), "--model", model, "--monitoring-ttl", "0",
               "--min-requests", str(POLICY["minRequests"]), "--min-agreement", str(POLICY["minAgreement"]),
               "--max-latency-ratio", str(POLICY["maxLatencyRatio"]), "--max-error-rate", str(POLICY["maxErrorRate"])]
    if shadow is not None:
        command += ["--shadow-url", shadow.url, "--mirror-percent", "100"]
    gateway = start_process("gateway", command, url=f"http://127.0.0.1:{port}", log=tmp_path / f"gateway-{pairing}.log")
    wait_ready(gateway)
    return gateway


def _replay(url: str, frame, target: str, id_column: str) -> None:
    records = json.loads(frame.drop(columns=[target, id_column]).to_json(orient="records", date_format="iso"))
    for record in records:
        request = urllib.request.Request(f"{url}/predict", data=json.dumps({"records": [record]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200


def _play_pod(cluster: Cluster, namespace: str, job: str, *, mounts: list[Path], tmp_path: Path) -> tuple[int, str]:
    """Run the Job's pod's container in the container engine, as the kubelet would: its image,
    command, user and environment (`envFrom` Secrets resolved), the spec ConfigMap and the
    termination log as files, a read-only root with /tmp writable, all capabilities dropped;
    `mounts` (the local registry, data store and source) at their own paths. Then write its
    end into the fake pod's status."""
    eng = engine()
    pod = wait_for(lambda: next(iter(json.loads(cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", f"job-name={job}", "-o", "json").stdout)["items"]), None),
        timeout=60, what=f"the pod of Job {job}")
    spec = pod["spec"]
    container, = spec["containers"]
    assert eng.exists(container["image"]), f"{container['image']} not built: run `make images`"
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    for source in container.get("envFrom", []):
        secret = json.loads(cluster.kubectl("get", "secret", source["secretRef"]["name"], "-n", namespace,
                                            "-o", "json").stdout)
        env.update({key: base64.b64decode(value).decode() for key, value in secret["data"].items()})
    args = ["run", "--rm", "--network=none", "--read-only", "--tmpfs", "/tmp", "--cap-drop=all",
            "--security-opt=no-new-privileges", "--user", str(spec["securityContext"]["runAsUser"])]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            config = json.loads(cluster.kubectl("get", "configmap", volume["configMap"]["name"], "-n", namespace,
                                                "-o", "json").stdout)
            folder = tmp_path / f"volume-{mount['name']}"
            folder.mkdir()
            for item in volume["configMap"]["items"]:
                (folder / item["path"]).write_text(config["data"][item["key"]])
            folder.chmod(0o755)
            args += ["-v", f"{folder}:{mount['mountPath']}:ro"]
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")
    termination_log.chmod(0o666)
    args += ["-v", f"{termination_log}:{container['terminationMessagePath']}"]
    for path in mounts:
        args += ["-v", f"{path}:{path}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    started = dt.datetime.now(dt.UTC)
    done = eng.run(*args, container["image"], *container["command"], check=False, timeout=900)
    message = termination_log.read_text() or (done.stdout + done.stderr)[-2000:]
    terminate_fake_pod(cluster, namespace, pod, done.returncode, message, started)
    return done.returncode, message + (done.stdout + done.stderr)[-3000:] * bool(done.returncode)


def _attempts(mds: ModelDeployments) -> list[dict[str, Any]]:
    return ((mds.get("fraud").get("status") or {}).get("retraining") or {}).get("attempts") or []


@dataclass
class Project:
    """A registry with fraud@1 (champion, with its reference profile) trained by `modelcycle run`
    on the data source, the data store, and the spec; each test gets its own copy."""

    root: Path
    spec: dict[str, Any]
    key: Path

    @property
    def data(self) -> Path:
        return self.root / "transactions.parquet"

    @property
    def spec_file(self) -> Path:
        return self.root / "modelcycle.yaml"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def store(self) -> Path:
        return self.root / "data"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("trained")
    spec = small_spec_dict()
    # The loop is under test, not the model: gates a small sample meets every time.
    spec["goal"]["primary"]["min"] = 0.6
    spec["goal"]["secondary"] = [{"metric": "recall", "min": 0.2}]
    project = Project(root=root, spec=spec, key=root / "signing-key")
    load_generator().generate(4000, seed=5).to_parquet(project.data, index=False)
    # A signing key of the tests' own: the local processes read it from the environment, the
    # Job's container from the Secret named by retrain.secretName.
    signing.new_key(project.key)
    _write_spec(project)
    first = subprocess.run([str(BIN / "modelcycle"), "run", str(project.spec_file), "--workdir", str(root / "v1"),
                            "--registry", str(project.registry), "--store", str(project.store)],
                           capture_output=True, text=True, timeout=900, env={**os.environ, signing.KEY_ENV: str(project.key)})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return project


def _write_spec(project: Project) -> None:
    project.spec_file.write_text(yaml.safe_dump({**project.spec, "data": {**project.spec["data"],
                                                                          "source": str(project.data)}}))


@pytest.fixture
def project(trained: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    root = tmp_path / "project"
    shutil.copytree(trained.root, root, ignore=shutil.ignore_patterns("v1"))
    copy = Project(root=root, spec=trained.spec, key=root / "signing-key")
    _write_spec(copy)
    monkeypatch.setenv(signing.KEY_ENV, str(copy.key))
    return copy


def test_a_drifted_gateway_leads_to_a_promoted_retrained_version(
    control_plane: Cluster, mds: ModelDeployments, namespace: str, project: Project, tmp_path: Path
) -> None:
    generator = load_generator()
    target, id_column = project.spec["data"]["target"], project.spec["data"]["id_column"]
    registry, store, data, spec_file, key = project.registry, project.store, project.data, project.spec_file, project.key
    servers = [production := _serve(registry, "fraud@1", tmp_path, "production")]
    servers.append(gateway := _gateway(registry, "fraud@1", production, tmp_path))
    operator = OperatorProcess(control_plane, namespace, tmp_path / "operator.log").start()
    try:
        control_plane.kubectl("create", "configmap", "fraud-spec", "-n", namespace,
                              f"--from-file={SPEC_KEY}={spec_file}")
        control_plane.kubectl("create", "secret", "generic", "ml-train", "-n", namespace,
                              f"--from-file={signing.KEY_ENV}={key}")
        mds.apply("fraud", {
            "model": "fraud", "registry": str(registry), "production": {"version": 1},
            "promotion": {"mode": "auto", "minDuration": "0s", **POLICY},
            "monitoring": {"schedule": "@every 2s", "retrain": {
                "enabled": True, "specConfigMap": "fraud-spec", "storeUri": str(store), "secretName": "ml-train",
                "minRows": 200,
                "cooldown": "1h", "maxPerDay": 2}},
        }, annotations={"modelcycle.io/gateway-url": gateway.url})
        mds.wait_condition("fraud", "Ready", timeout=60)
        drifted = mds.condition("fraud", "Drifted")
        assert drifted["status"] in ("False", "Unknown"), drifted  # no traffic yet: nothing to call drift

        # The world drifts: the gateway sees it, labelled data of the new world reaches the source.
        _replay(gateway.url, generator.generate(300, seed=6, drift=0.9, start="2026-08-01", days=7), target, id_column)
        import pandas as pd

        pd.concat([pd.read_parquet(data), generator.generate(2500, seed=7, drift=0.9, start="2026-07-01", days=30)],
                  ignore_index=True).to_parquet(data, index=False)
        condition = mds.wait_condition("fraud", "Drifted", reason="DataDrift", timeout=90)
        assert "drift" in condition["message"]
        events = wait_for(lambda: [e for e in mds.events("fraud") if e["reason"] in ("DriftDetected",
                                                                                   "RetrainingStarted")]
                          if len({e["reason"] for e in mds.events("fraud")} & {"DriftDetected",
                                                                               "RetrainingStarted"}) == 2 else None,
                          timeout=30, what="the DriftDetected and RetrainingStarted Events")
        assert {e["type"] for e in events if e["reason"] == "DriftDetected"} == {"Warning"}

        job = json.loads(control_plane.kubectl("get", "job", "fraud-retrain-1", "-n", namespace, "-o",
                                               "json").stdout)
        container, = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["modelcycle", "run", f"{SPEC_MOUNT}/{SPEC_KEY}", "--workdir",
                                        "/tmp/modelcycle", "--registry", str(registry), "--store", str(store)]
        assert job["metadata"]["ownerReferences"][0]["name"] == "fraud"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        attempt, = _attempts(mds)
        assert (attempt["outcome"], attempt["trigger"], attempt["job"]) == ("training", "drift", "fraud-retrain-1")

        for path in (registry, store):  # the image's user (10001) writes there, as it would in a bucket
            subprocess.run(["chmod", "-R", "a+rwX", str(path)], check=True)
        data.chmod(0o644)
        code, message = _play_pod(control_plane, namespace, "fraud-retrain-1", mounts=[registry, store, data],
                                  tmp_path=tmp_path)
        assert code == 0, message
        assert json.loads(message)["model_version"] == "fraud@2"

        # The registered version becomes the shadow, served from the registry.
        wait_for(lambda: str((mds.get("fraud")["spec"].get("shadow") or {}).get("version")) == "2", timeout=60,
                 what="spec.shadow.version 2")
        attempt, = _attempts(mds)
        assert (attempt["outcome"], attempt["version"]) == ("shadow", 2)
        shadow_deployment = json.loads(control_plane.kubectl("get", "deployment", "fraud-shadow", "-n", namespace,
                                                              "-o", "json").stdout)
        command = shadow_deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[:3] == ["python", "-m", "modelcycle.serving.model_server"] and "fraud@2" in command

        # What the cluster would do with that spec: a shadow server and the gateway mirroring to it.
        stop_process(servers.pop())
        servers.append(shadow := _serve(registry, "fraud@2", tmp_path, "shadow"))
        servers.append(gateway := _gateway(registry, "fraud@1", production, tmp_path, shadow=shadow))
        mds.patch("fraud", {"metadata": {"annotations": {"modelcycle.io/gateway-url": gateway.url}}})
        _replay(gateway.url, generator.generate(60, seed=8, drift=0.9, start="2026-08-10", days=3), target, id_column)

        wait_for(lambda: str(mds.get("fraud")["spec"]["production"]["version"]) == "2", timeout=90,
                 what="the promotion of version 2")
        final = mds.get("fraud")
        assert "shadow" not in final["spec"] and "image" not in final["spec"]["production"]
        attempt = wait_for(lambda: next((a for a in _attempts(mds) if a["outcome"] == "promoted"), None),
                           timeout=30, what="the attempt marked promoted")
        assert attempt["number"] == 1 and attempt["finishedAt"]
        assert len([e for e in mds.events("fraud") if e["reason"] == "RetrainingStarted"]) == 1
    finally:
        operator.stop()
        for server in reversed(servers):
            stop_process(server)
        print(operator.tail(60))


def test_with_the_kfp_runner_a_breach_starts_one_kubeflow_run_whose_version_becomes_the_shadow(
    control_plane: Cluster, mds: ModelDeployments, namespace: str, project: Project, tmp_path: Path
) -> None:
    """The same breach with `runner: kfp`: the operator starts one run of the uploaded pipeline
    through `kfp.Client` (on `FakeKfpApi`, which checks each request with kfp-server-api's
    models), with the spec from the ConfigMap; when the run succeeds, the registry's
    challenger is the shadow (KFP's API returns no output parameters)."""
    from test_kfp_runner import FakeKfpApi, _serve as serve_kfp

    from modelcycle.pipelines import PIPELINE_NAME, compile_pipeline

    generator = load_generator()
    target, id_column = project.spec["data"]["target"], project.spec["data"]["id_column"]
    fake = FakeKfpApi(compile_pipeline(tmp_path / "training.yaml"))
    kfp_server = serve_kfp(fake)
    next(kfp_server)
    fake.upload(PIPELINE_NAME)
    servers = [production := _serve(project.registry, "fraud@1", tmp_path, "production")]
    servers.append(gateway := _gateway(project.registry, "fraud@1", production, tmp_path))
    operator = OperatorProcess(control_plane, namespace, tmp_path / "operator.log").start()
    try:
        control_plane.kubectl("create", "configmap", "fraud-spec", "-n", namespace,
                              f"--from-file={SPEC_KEY}={project.spec_file}")
        mds.apply("fraud", {
            "model": "fraud", "registry": str(project.registry), "production": {"version": 1},
            "monitoring": {"schedule": "@every 2s", "retrain": {
                "enabled": True, "runner": "kfp", "pipeline": PIPELINE_NAME,
                "kfp": {"host": fake.url, "namespace": "team-fraud"},
                "specConfigMap": "fraud-spec", "storeUri": str(project.store), "minRows": 200}},
        }, annotations={"modelcycle.io/gateway-url": gateway.url})
        _replay(gateway.url, generator.generate(300, seed=6, drift=0.9, start="2026-08-01", days=7), target, id_column)
        mds.wait_condition("fraud", "Drifted", reason="DataDrift", timeout=90)

        run = wait_for(lambda: next(iter(fake.runs.values()), None), timeout=60, what="a KFP run")
        uid = mds.get("fraud")["metadata"]["uid"]
        assert run["display_name"] == f"fraud-retrain-1-{uid[:8]}"
        assert run["runtime_config"]["parameters"] == {
            "spec_yaml": project.spec_file.read_text(), "base_dir": "", "store_uri": str(project.store),
            "registry_uri": str(project.registry)}
        experiment = fake.experiments[run["experiment_id"]]
        assert (experiment["display_name"], experiment["namespace"]) == (namespace, "team-fraud")
        attempt, = _attempts(mds)
        assert (attempt["runner"], attempt["runId"], attempt["outcome"]) == ("kfp", run["run_id"], "training")
        assert not fake.refused, fake.refused

        fake.runs[run["run_id"]]["state"] = "SUCCEEDED"
        wait_for(lambda: (mds.get("fraud")["spec"].get("shadow") or {}).get("version") == "challenger", timeout=60,
                 what="spec.shadow.version challenger")
        attempt, = _attempts(mds)
        assert (attempt["outcome"], attempt["version"]) == ("shadow", "challenger")
        assert len(fake.runs) == 1  # still drifted, but one retraining at a time
    finally:
        operator.stop()
        for server in reversed(servers):
            stop_process(server)
        next(kfp_server, None)
        print(operator.tail(60))
