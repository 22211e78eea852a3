"""The operator's pods start for real: what the operator applies for a ModelDeployment with a
shadow, read back from the local control plane's API server, run by `podman kube play` with
the real bento images (version 1 in production, version 2 as the shadow) and the gateway's
modelcycle image.

kwok pods run nothing, so the Deployments and the ConfigMap are taken from the API server
(``kubectl get -o json``) and played. The rewrites between the two, and only these:

1. Each Deployment keeps its pod template whole (security contexts, resources, probes, env
   from the ConfigMap, `$(VAR)` arguments, volumes); its metadata is cut to name and labels
   (the API server's bookkeeping: uid, managedFields, ownerReferences, status).
2. Each container port gets ``hostIP: 127.0.0.1`` and a free ``hostPort``, so the test can
   reach the pods from the host.
3. kube play ignores Services, so the gateway ConfigMap's ``PRODUCTION_URL`` and
   ``SHADOW_URL`` (``http://fraud-production.NS.svc:3000``) become the model pods' addresses
   on podman's network (``http://POD_IP:3000``), what a Service resolves to.
4. podman before 4.7 does not expand ``$(VAR)`` in a container's command and arguments
   (containers/podman#15983, fixed by #19630), which Kubernetes does from the container's
   env. The test expands the gateway's ``$(VAR)`` arguments as the kubelet would: from the
   container's own env entries, resolved through their ``configMapKeyRef`` in the
   (rewritten) ConfigMap, and fails if a reference is left unresolved.
5. The gateway's feedback Secret, read back from the API server, is played with its
   metadata cut to its name. podman 4.3 writes a mounted Secret's values base64-encoded
   where the kubelet writes them decoded, so the test takes the token from the file in the
   gateway's container, after checking that it is the Secret's value in either form.

kube play honours runAsUser, readOnlyRootFilesystem and resource limits; it ignores
readiness probes and turns liveness into a health check that runs `curl` inside the image
(the images have none), so the test calls the probes' paths itself. Every pod is removed with `podman kube down`.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_bento_image import bento_images, free_port, http, in_process, served, wait_http  # noqa: F401

from modelcycle.cluster.images import PYTHON_IMAGE
from modelcycle.operator.resources import (
    GATEWAY_PORT,
    GATEWAY_UID,
    MODEL_PORT,
    MODEL_SERVER_UID,
    POLICY_KEY,
    PREDICTION_LOG_DIR,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from modeldeployments import CRD, ModelDeployments, OperatorProcess, wait_for  # noqa: E402

pytestmark = pytest.mark.cluster


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in binary units (``1Gi``, ``1536Mi``) in bytes."""
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()
    return int(number) << {"Ki": 10, "Mi": 20, "Gi": 30}[unit]


def playable(deployment: dict, host_ports: dict[int, int], configmap: dict | None = None) -> dict:
    """Rewrites 1, 2 and (given the ConfigMap) 4 of the module docstring."""
    template = json.loads(json.dumps(deployment["spec"]["template"]))
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            port.update(hostIP="127.0.0.1", hostPort=host_ports[port["containerPort"]])
        if configmap is not None:
            env = {}
            for item in container.get("env", []):
                ref = (item.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] == configmap["metadata"]["name"], item
                    env[item["name"]] = configmap["data"][ref["key"]]
                else:
                    env[item["name"]] = item["value"]
            expand = lambda arg: re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), arg)  # noqa: E731
            for key in ("command", "args"):
                if key in container:
                    container[key] = [expand(arg) for arg in container[key]]
                    assert not any("$(" in arg for arg in container[key]), container[key]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment["metadata"]["name"], "labels": deployment["metadata"]["labels"]},
        "spec": {"replicas": 1, "selector": deployment["spec"]["selector"], "template": template},
    }


class KubePlay:
    """`podman kube play` of YAML files, each brought down with `podman kube down` at the end."""

    def __init__(self, engine, folder: Path) -> None:
        self.engine, self.folder = engine, folder
        self.played: list[Path] = []
        self.pods: dict[str, str] = {}
        self.secrets: list[str] = []

    def play(self, name: str, manifest: dict, *, configmap: dict | None = None, secrets: tuple[dict, ...] = ()) -> str:
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all([*secrets, manifest]))
        self.secrets += [secret["metadata"]["name"] for secret in secrets]
        args = ["kube", "play"]
        if configmap is not None:
            configmap_path = self.folder / f"{name}-configmap.yaml"
            configmap_path.write_text(yaml.safe_dump(configmap))
            args += ["--configmap", str(configmap_path)]
        self.played.append(path)
        out = self.engine.run(*args, str(path), timeout=300).stdout
        pod_id = out.split("Pod:")[1].split()[0]
        self.pods[name] = pod_id
        return pod_id

    def container(self, name: str) -> dict:
        """The inspection of the pod's one application container (not its infra container)."""
        pod = json.loads(self.engine.run("pod", "inspect", self.pods[name]).stdout)
        pod = pod[0] if isinstance(pod, list) else pod
        (app,) = [c["Id"] for c in pod["Containers"] if c["Id"] != pod.get("InfraContainerID")]
        return json.loads(self.engine.run("inspect", app).stdout)[0]

    def pod_ip(self, name: str) -> str:
        pod = json.loads(self.engine.run("pod", "inspect", self.pods[name]).stdout)
        pod = pod[0] if isinstance(pod, list) else pod
        infra = json.loads(self.engine.run("inspect", pod["InfraContainerID"]).stdout)[0]
        (address,) = {n["IPAddress"] for n in infra["NetworkSettings"]["Networks"].values() if n["IPAddress"]}
        return address

    def logs(self, name: str) -> str:
        container = self.container(name)["Id"]
        proc = self.engine.run("logs", container, check=False)
        return proc.stdout + proc.stderr

    def down(self) -> None:
        for path in reversed(self.played):
            self.engine.run("kube", "down", str(path), check=False, timeout=120)
        for secret in self.secrets:  # kube play keeps a played Secret as a podman secret
            self.engine.run("secret", "rm", secret, check=False)


@pytest.fixture
def kube_play(container_engine, tmp_path):
    player = KubePlay(container_engine, tmp_path)
    try:
        yield player
    finally:
        for name in player.pods:
            try:
                print(f"--- {name}\n{player.logs(name)[-3000:]}")
            except Exception as exc:  # noqa: BLE001 - the logs are a courtesy; the pods must come down
                print(f"--- {name}: no logs ({exc})")
        player.down()


@pytest.fixture
def applied(control_plane, namespace, bento_images, tmp_path):
    """The operator's children for `fraud` (production v1, shadow v2 at 100%), read back."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/modeldeployments.modelcycle.io")
    operator = OperatorProcess(control_plane, namespace, tmp_path / "operator.log",
                               env={"MODELCYCLE_GATEWAY_IMAGE": PYTHON_IMAGE}).start()
    try:
        ModelDeployments(control_plane, namespace).apply("fraud", {
            "model": "fraud",
            "production": {"version": 1, "image": bento_images[1].built.tag},
            "shadow": {"version": 2, "image": bento_images[2].built.tag, "mirrorPercent": 100},
        })

        def read_back():
            try:
                found = {name: json.loads(control_plane.kubectl("get", "deployment", f"fraud-{name}", "-n", namespace,
                                                                "-o", "json").stdout)
                         for name in ("production", "shadow", "gateway")}
                found["configmap"] = json.loads(control_plane.kubectl("get", "configmap", "fraud-gateway", "-n",
                                                                      namespace, "-o", "json").stdout)
                found["secret"] = json.loads(control_plane.kubectl("get", "secret", "fraud-feedback", "-n",
                                                                   namespace, "-o", "json").stdout)
            except Exception:  # noqa: BLE001 - not applied yet
                return None
            return found

        yield wait_for(read_back, timeout=60, what="the operator's Deployments, ConfigMap and Secret")
    finally:
        operator.stop()
        print(operator.tail())


def test_operator_pods_serve_production_and_log_the_shadow(applied, kube_play, served, in_process, namespace):
    ports = {name: free_port() for name in ("production", "shadow", "gateway")}
    for side in ("production", "shadow"):
        kube_play.play(side, playable(applied[side], {MODEL_PORT: ports[side]}))
    configmap = applied["configmap"]
    assert configmap["data"]["PRODUCTION_URL"] == f"http://fraud-production.{namespace}.svc:{MODEL_PORT}"
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": configmap["metadata"]["name"]},
                 "data": {**configmap["data"],
                          "PRODUCTION_URL": f"http://{kube_play.pod_ip('production')}:{MODEL_PORT}",
                          "SHADOW_URL": f"http://{kube_play.pod_ip('shadow')}:{MODEL_PORT}"}}
    assert any("$(" in arg for arg in applied["gateway"]["spec"]["template"]["spec"]["containers"][0]["args"])
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": applied["secret"]["metadata"]["name"]},
              "type": applied["secret"]["type"], "data": applied["secret"]["data"]}
    kube_play.play("gateway", playable(applied["gateway"], {GATEWAY_PORT: ports["gateway"]}, configmap),
                   configmap=configmap, secrets=(secret,))

    # Each pod runs under the operator's security context: its user, a read-only root, its limits.
    for name, uid in (("production", MODEL_SERVER_UID), ("shadow", MODEL_SERVER_UID), ("gateway", GATEWAY_UID)):
        container = kube_play.container(name)
        assert container["Config"]["User"].split(":")[0] == str(uid), name
        assert container["HostConfig"]["ReadonlyRootfs"] is True, name
        limit = applied[name]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        assert container["HostConfig"]["Memory"] == memory_bytes(limit), name
        proc = kube_play.engine.run("exec", container["Id"], "python3", "-c",
                                    "import os\ntry:\n    open('/root-is-writable', 'w')\nexcept OSError:\n"
                                    "    print(os.getuid(), 'read-only')", timeout=60)
        assert proc.stdout.split() == [str(uid), "read-only"], name
        if name != "gateway":  # BentoML's home is in the emptyDir, whatever the image says
            assert "BENTOML_HOME=/tmp/bentoml" in container["Config"]["Env"], name

    # The probes' paths answer.
    for side in ("production", "shadow"):
        url = f"http://127.0.0.1:{ports[side]}"
        wait_http(f"{url}/readyz", timeout=120)
        assert http("GET", f"{url}/livez")[0] == 200
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    wait_http(f"{gateway}/readyz", timeout=60)
    assert http("GET", f"{gateway}/healthz")[0] == 200
    # The gateway's arguments, expanded from its env and the ConfigMap (rewrite 4), reached it.
    args = kube_play.container("gateway")["Args"]
    assert f"--production-url=http://{kube_play.pod_ip('production')}:{MODEL_PORT}" in args, args
    assert "--mirror-percent=100" in args, args
    # The feedback token (rewrite 5) and the promotion policy are files of the pod's volumes.
    token_file = next(arg.split("=", 1)[1] for arg in args if arg.startswith("--feedback-token-file="))
    mounted = kube_play.engine.run("exec", kube_play.container("gateway")["Id"], "cat", token_file).stdout.strip()
    assert mounted in (base64.b64decode(secret["data"]["token"]).decode(), secret["data"]["token"])
    assert http("POST", f"{gateway}/feedback", {"request_id": "x", "label": 1})[0] == 401
    labelled = urllib.request.Request(f"{gateway}/feedback", data=b'{"request_id": "x", "label": 1}', headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {mounted}"})
    with urllib.request.urlopen(labelled, timeout=10) as answer:
        assert answer.status == 202

    # Through the gateway, clients get production's answer.
    requests = 8
    for index in range(requests):
        records = served.records[index * 3:index * 3 + 3]
        status, body = http("POST", f"{gateway}/predict", {"records": records}, timeout=30)
        assert status == 200, body
        answer = json.loads(body)
        assert answer["model_version"] == "1"
        assert answer["predictions"] == in_process(1, records)[0]

    # The shadow's answers land in the gateway's prediction log.
    def shadow_entries():
        out = kube_play.engine.run("exec", kube_play.container("gateway")["Id"], "sh", "-c",
                                   f"cat {PREDICTION_LOG_DIR}/*.jsonl", check=False).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        answered = [e for e in entries if e["type"] == "shadow" and (e.get("shadow") or {}).get("status") == 200]
        return answered if len(answered) == requests else None

    entries = wait_for(shadow_entries, timeout=30, what="the shadow's answers in the prediction log")
    assert {entry["shadow"]["version"] for entry in entries} == {"2"}

    status, body = http("GET", f"{gateway}/shadow/comparison", timeout=60)
    assert status == 200, body
    comparison = json.loads(body)
    assert comparison["production_versions"] == ["1"] and comparison["shadow_versions"] == ["2"]
    assert comparison["compared_requests"] == requests
    assert comparison["policy"] == json.loads(configmap["data"][POLICY_KEY])
    print(f"comparison: agreement {comparison['agreement']}, verdict {comparison['verdict']}")
