"""The children of a ModelDeployment, as manifests for server-side apply.

A ModelDeployment named `fraud` owns:

- `fraud-production`: a Deployment and a Service running the production bento image;
- `fraud-shadow`: the same for the shadow version, only while `spec.shadow` exists;
- `fraud-gateway`: a ConfigMap with the routing and mirror settings and the promotion
  policy, and the Deployment and Service of the gateway (`python -m
  modelcycle.serving.gateway`) that clients call. The routing keys reach the gateway as
  `$(VAR)` arguments, and its pod template carries a hash of them, so a change of routing
  rolls the gateway: the new pod starts with an empty prediction log, so a comparison
  never mixes two shadows. The policy (`policy.json`, the `ShadowPolicy` of
  `spec.promotion`) is mounted as a directory, not with subPath, so the kubelet swaps in
  a new file when spec.promotion changes and the gateway reads it again: new thresholds,
  the same pod, the same log;
- `fraud-feedback`: a Secret with the bearer token the gateway's `/feedback` requires,
  mounted into the gateway. The operator creates it once with a random token
  (`feedback_secret`) and never reads it back, so the token is in no ModelDeployment, no
  status and no operator cache; clients read it from the Secret;
- `fraud-batch`: a CronJob, only while `spec.batch` exists, whose Jobs run `modelcycle
  predict` in the modelcycle image over `spec.batch.input` into `spec.batch.output`. Its
  container writes the run's summary (one line of JSON: rows, rejected, seconds) to its
  termination message, so the figures reach the pod's status without the operator reading
  any file; when the run fails before that, the tail of its log stands in.

Every child carries a controller owner reference to the ModelDeployment (the garbage
collector deletes it with its owner; no finalizer is needed) and the `app.kubernetes.io/*`
labels. Pods run non-root with a read-only root filesystem, all capabilities dropped, and
an emptyDir for what must be written. A child also carries `modelcycle.io/applied-hash`, a
digest of the manifest the operator applied, so the operator can tell from its cache that
a child is already as wanted and skip the request.

These are plain functions of the ModelDeployment's body: no API access here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any, Literal

from modelcycle.operator.promotion import shadow_policy
from modelcycle.operator.settings import GROUP, KIND, MANAGED_BY, VERSION

Component = Literal["production", "shadow", "gateway", "batch", "feedback"]
Manifest = dict[str, Any]

MODEL_PORT = 3000
"""The bento image's HTTP port (/predict, /readyz, /livez)."""
GATEWAY_PORT = 8080
"""The gateway's HTTP port (/predict, /readyz, /healthz, /shadow/comparison)."""
MODEL_SERVER_UID = 1034
"""The `bentoml` user that BentoML's generated Dockerfile creates."""
GATEWAY_UID = 10001
"""The `modelcycle` user of the modelcycle image (Dockerfile)."""
PREDICTION_LOG_DIR = "/var/lib/modelcycle/predictions"
PREDICTION_LOG_VOLUME_BYTES = 2**30
"""The sizeLimit of the gateway's prediction log emptyDir (1Gi): past it the kubelet evicts the pod."""
PREDICTION_LOG_RETAIN_BYTES = PREDICTION_LOG_VOLUME_BYTES // 2
"""`--retain-bytes` of the gateway: half the volume, since retention deletes whole closed
segments and never the open one (64 MiB at most), so the log stays well under the limit."""
POLICY_DIR = "/etc/modelcycle/policy"
POLICY_KEY = "policy.json"
"""The gateway ConfigMap's key with the promotion policy, a file in `POLICY_DIR`."""
FEEDBACK_DIR = "/etc/modelcycle/feedback"
FEEDBACK_TOKEN_KEY = "token"
"""The feedback Secret's key with the token, a file in `FEEDBACK_DIR`."""
BENTOML_HOME = "/tmp/bentoml"
"""Where a model server's BentoML writes at start-up: in the pod's /tmp emptyDir."""

APPLIED_HASH = "modelcycle.io/applied-hash"
CONFIG_HASH = "modelcycle.io/config-hash"
OWNER_LABEL = "modelcycle.io/deployment"
"""Names the owning ModelDeployment on every child; the operator's caches key on it."""

TRUSTED_KEYS_ENV = "MODELCYCLE_TRUSTED_KEYS"
"""The public keys a pod verifies model versions with (`modelcycle.signing`)."""
BATCH_CONTAINER = "predict"
TERMINATION_LOG = "/dev/termination-log"
BATCH_SUMMARY_ENV = "MODELCYCLE_BATCH_SUMMARY"
"""`modelcycle.batch.SUMMARY_ENV`, spelled out: the operator's image has no scientific stack to import it from."""
EXIT_REJECTED = 4
"""`modelcycle predict`'s exit code when records were rejected: the run is done, so its Job
fails at once instead of being retried over the same records."""

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}
"""A model server's resources unless the spec says otherwise: a small model fits, and the
memory limit keeps a leaking one from taking the node."""
BATCH_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"memory": "2Gi"},
}
"""A batch run's resources unless the spec says otherwise: chunks of 100,000 rows of the
example peak at about 460 MB (README, Batch and embedded)."""
GATEWAY_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1536Mi"},
}
"""The gateway and its comparison worker (with pandas and scipy, 180 MB to start). The worker
keeps a few hundred bytes per logged request (bench/shadow_memory.py: 365 B at its peak over
100,000 requests of the fraud example, whose log takes 850 B per request), and retention
keeps at most `PREDICTION_LOG_RETAIN_BYTES` of log: about 630,000 such requests, 230 MB."""


def child_name(md_name: str, component: Component) -> str:
    return f"{md_name}-{component}"


def labels(md: Mapping[str, Any], component: Component, version: str | None = None) -> dict[str, str]:
    """The standard labels of one child, plus the owner's name for the operator's caches."""
    name = md["metadata"]["name"]
    result = {
        "app.kubernetes.io/name": {"gateway": "modelcycle-gateway", "feedback": "modelcycle-gateway",
                                   "batch": "modelcycle-batch"}.get(component, "modelcycle-model-server"),
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "modelcycle",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        OWNER_LABEL: name,
        "modelcycle.io/model": md["spec"]["model"],
    }
    if version is not None:
        result["app.kubernetes.io/version"] = version
    return result


def selector(md: Mapping[str, Any], component: Component) -> dict[str, str]:
    """Labels that pick a child's pods; never the version, since a Deployment's selector is
    immutable and a promotion changes the version."""
    return {"app.kubernetes.io/instance": md["metadata"]["name"], "app.kubernetes.io/component": component}


def owner_reference(md: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": md["metadata"]["name"],
        "uid": md["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def desired_children(md: Mapping[str, Any], *, gateway_image: str, trusted_keys: str = "") -> list[Manifest]:
    """Every child the spec asks for, each with its applied-hash annotation. `trusted_keys`
    (public PEM text) reaches every pod that unpickles a model: the model servers and batch."""
    spec = md["spec"]
    children = [
        *model_server(md, "production", spec["production"], model_server_image=gateway_image,
                      trusted_keys=trusted_keys),
        *gateway(md, gateway_image=gateway_image),
    ]
    if spec.get("shadow"):
        children += model_server(md, "shadow", spec["shadow"], model_server_image=gateway_image,
                                 trusted_keys=trusted_keys)
    if spec.get("batch"):
        children.append(batch(md, image=gateway_image, trusted_keys=trusted_keys))
    return [_with_hash(child) for child in children]


def _trusted(trusted_keys: str) -> list[Manifest]:
    return [{"name": TRUSTED_KEYS_ENV, "value": trusted_keys}] if trusted_keys else []


def model_server(md: Mapping[str, Any], component: Component, side: Mapping[str, Any], *,
                 model_server_image: str, trusted_keys: str = "") -> list[Manifest]:
    """Deployment and Service of one side (production or shadow): its bento image, or without
    one the modelcycle image's model server (`model_server_image`) reading `spec.registry`."""
    version = str(side["version"])
    name = child_name(md["metadata"]["name"], component)
    container: Manifest = {
        "name": "model-server",
        "image": side.get("image") or model_server_image,
        "ports": [{"name": "http", "containerPort": MODEL_PORT, "protocol": "TCP"}],
        # BentoML writes its home (metrics, sockets) at start-up, and the image BentoML itself
        # generates puts it under /home/bentoml: on a read-only root it must be in the emptyDir.
        "env": [{"name": "TMPDIR", "value": "/tmp"}, {"name": "BENTOML_HOME", "value": BENTOML_HOME},
                *_trusted(trusted_keys)],
        # A model is loaded (and its sha256 checked) before /readyz answers; the startup
        # probe gives that up to a minute before liveness may restart the pod.
        "startupProbe": _http_probe("/livez", MODEL_PORT, period=2, failures=30),
        "readinessProbe": _http_probe("/readyz", MODEL_PORT, period=5, failures=3),
        "livenessProbe": _http_probe("/livez", MODEL_PORT, period=10, failures=3),
        "resources": _resources(side.get("resources"), DEFAULT_RESOURCES),
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    uid = MODEL_SERVER_UID
    if not side.get("image"):
        # No bento image: the modelcycle image's model server loads the version from the
        # registry at start-up, signature and sha256 checked before unpickling.
        container["command"] = ["python", "-m", "modelcycle.serving.model_server", "--registry",
                                md["spec"]["registry"], "--model", f"{md['spec']['model']}@{version}",
                                f"--port={MODEL_PORT}"]
        container["terminationMessagePolicy"] = "FallbackToLogsOnError"
        uid = GATEWAY_UID
    if md["spec"].get("registrySecret"):  # credentials by reference: their values never enter the resource
        container["envFrom"] = [{"secretRef": {"name": md["spec"]["registrySecret"]}}]
    deployment = _deployment(
        md, component, name=name, version=version, replicas=int(side.get("replicas", 1)),
        container=container, uid=uid, annotations={},
    )
    return [deployment, _service(md, component, name=name, port=MODEL_PORT, version=version)]


def gateway_config(md: Mapping[str, Any]) -> dict[str, str]:
    """The gateway ConfigMap's data: the routing keys its arguments refer to, and
    `POLICY_KEY`, the promotion policy as the JSON object of `ShadowPolicy` fields that
    the gateway's ``--policy-file`` reads."""
    name, namespace = md["metadata"]["name"], md["metadata"]["namespace"]
    spec = md["spec"]
    data = {
        "PRODUCTION_URL": f"http://{child_name(name, 'production')}.{namespace}.svc:{MODEL_PORT}",
        "MIRROR_PERCENT": "0",
    }
    shadow = spec.get("shadow")
    if shadow:
        data["SHADOW_URL"] = f"http://{child_name(name, 'shadow')}.{namespace}.svc:{MODEL_PORT}"
        data["MIRROR_PERCENT"] = _number(shadow.get("mirrorPercent", 100))
    data[POLICY_KEY] = shadow_policy(spec.get("promotion") or {}).model_dump_json()
    return data


def gateway(md: Mapping[str, Any], *, gateway_image: str) -> list[Manifest]:
    """ConfigMap, Deployment and Service of the gateway."""
    name = child_name(md["metadata"]["name"], "gateway")
    data = gateway_config(md)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(md, "gateway", name=name),
        "data": data,
    }
    flags = [("--production-url", "PRODUCTION_URL"), ("--mirror-percent", "MIRROR_PERCENT")]
    if "SHADOW_URL" in data:
        flags.insert(1, ("--shadow-url", "SHADOW_URL"))
    routing = {key: data[key] for _, key in flags}
    spec = md["spec"]
    profile = []
    if spec.get("registry"):  # production's reference profile, for GET /monitoring and the drift metrics
        profile = [f"--registry={spec['registry']}", f"--model={spec['model']}@{spec['production']['version']}"]
        routing["profile"] = profile  # a promotion reads the new version's profile: a new pairing, a new log
    container = {
        "name": "gateway",
        "image": gateway_image,
        "command": ["python", "-m", "modelcycle.serving.gateway"],
        "args": [
            *(f"{flag}=$({key})" for flag, key in flags),
            f"--log-dir={PREDICTION_LOG_DIR}",
            f"--retain-bytes={PREDICTION_LOG_RETAIN_BYTES}",
            f"--policy-file={POLICY_DIR}/{POLICY_KEY}",
            f"--feedback-token-file={FEEDBACK_DIR}/{FEEDBACK_TOKEN_KEY}",
            *profile,
            "--host=0.0.0.0",
            f"--port={GATEWAY_PORT}",
        ],
        "env": [
            {"name": key, "valueFrom": {"configMapKeyRef": {"name": name, "key": key}}}
            for _, key in flags
        ],
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        "readinessProbe": _http_probe("/readyz", GATEWAY_PORT, period=5, failures=3),
        "livenessProbe": _http_probe("/healthz", GATEWAY_PORT, period=10, failures=3),
        "resources": GATEWAY_RESOURCES,
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "predictions", "mountPath": PREDICTION_LOG_DIR},
            {"name": "policy", "mountPath": POLICY_DIR, "readOnly": True},
            {"name": "feedback", "mountPath": FEEDBACK_DIR, "readOnly": True},
        ],
    }
    if profile and spec.get("registrySecret"):
        container["envFrom"] = [{"secretRef": {"name": spec["registrySecret"]}}]
    deployment = _deployment(
        md, "gateway", name=name, version=None, replicas=1, container=container, uid=GATEWAY_UID,
        # Only what needs a new process: the policy file is read again in place.
        annotations={CONFIG_HASH: _digest(routing)},
        extra_volumes=[
            {"name": "predictions", "emptyDir": {"sizeLimit": f"{PREDICTION_LOG_VOLUME_BYTES // 2**20}Mi"}},
            # A directory mount (no subPath), so the kubelet updates the file when the ConfigMap changes.
            {"name": "policy", "configMap": {"name": name, "items": [{"key": POLICY_KEY, "path": POLICY_KEY}]}},
            {"name": "feedback", "secret": {
                "secretName": child_name(md["metadata"]["name"], "feedback"),
                "items": [{"key": FEEDBACK_TOKEN_KEY, "path": FEEDBACK_TOKEN_KEY}],
                "defaultMode": 0o440,
                "optional": False,  # the default, said: podman kube play 4.3 crashes when it is absent
            }},
        ],
        # One gateway: the comparison is computed over one prediction log; a rolling update
        # would split the log across two pods. The gateway drains in under 20 s.
        strategy={"type": "Recreate"},
        grace_period=30,
    )
    return [config_map, deployment, _service(md, "gateway", name=name, port=GATEWAY_PORT, version=None)]


def feedback_secret(md: Mapping[str, Any]) -> Manifest:
    """The Secret with a new random token for the gateway's /feedback, for a create that is
    done once: unlike the other children it is not applied again, since a token that
    changed on every pass would lock clients out."""
    token = secrets.token_urlsafe(32)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(md, "feedback", name=child_name(md["metadata"]["name"], "feedback")),
        "type": "Opaque",
        "data": {FEEDBACK_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def batch_command(md: Mapping[str, Any]) -> list[str]:
    """The `modelcycle predict` command a scheduled run executes."""
    spec, run = md["spec"], md["spec"]["batch"]
    version = run.get("version", spec["production"]["version"])
    command = ["modelcycle", "predict", f"{spec['model']}@{version}", "--input", run["input"],
               "--output", run["output"], "--registry", run["registry"]]
    if run.get("chunkRows"):
        command += ["--chunk-rows", str(int(run["chunkRows"]))]
    return command


def batch(md: Mapping[str, Any], *, image: str, trusted_keys: str = "") -> Manifest:
    """The CronJob of `spec.batch`. `kubectl create job --from=cronjob/NAME-batch` runs it once."""
    run = md["spec"]["batch"]
    name = child_name(md["metadata"]["name"], "batch")
    container: Manifest = {
        "name": BATCH_CONTAINER,
        "image": image,
        "command": batch_command(md),
        "env": [
            {"name": "TMPDIR", "value": "/tmp"},
            {"name": "HOME", "value": "/tmp"},
            {"name": BATCH_SUMMARY_ENV, "value": TERMINATION_LOG},
            *_trusted(trusted_keys),
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": _resources(run.get("resources"), BATCH_RESOURCES),
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if run.get("secretName"):  # credentials (AWS_*) by reference: their values never enter the resource
        container["envFrom"] = [{"secretRef": {"name": run["secretName"]}}]
    pod_labels = labels(md, "batch")
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _metadata(md, "batch", name=name),
        "spec": {
            "schedule": run["schedule"],
            "suspend": bool(run.get("suspend", False)),
            # A run replaces its output whole; two at once would race for it.
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "backoffLimit": 2,
                    "podFailurePolicy": {"rules": [{
                        "action": "FailJob",
                        "onExitCodes": {"containerName": BATCH_CONTAINER, "operator": "In", "values": [EXIT_REJECTED]},
                    }]},
                    "template": {
                        "metadata": {"labels": pod_labels},
                        "spec": {
                            "restartPolicy": "Never",
                            "automountServiceAccountToken": False,
                            "enableServiceLinks": False,
                            "securityContext": _pod_security(GATEWAY_UID),
                            "containers": [container],
                            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
                        },
                    },
                },
            },
        },
    }


def _deployment(
    md: Mapping[str, Any],
    component: Component,
    *,
    name: str,
    version: str | None,
    replicas: int,
    container: Manifest,
    uid: int,
    annotations: dict[str, str],
    extra_volumes: list[Manifest] | None = None,
    strategy: Manifest | None = None,
    grace_period: int = 30,
) -> Manifest:
    pod_labels = labels(md, component, version)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(md, component, name=name, version=version),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(md, component)},
            # Production keeps serving through a rollout: a new pod first, then an old one goes.
            "strategy": strategy or {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": grace_period,
                    "securityContext": _pod_security(uid),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}, *(extra_volumes or [])],
                },
            },
        },
    }


def _service(md: Mapping[str, Any], component: Component, *, name: str, port: int, version: str | None) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, component, name=name, version=version),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(md, component),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _metadata(md: Mapping[str, Any], component: Component, *, name: str, version: str | None = None) -> Manifest:
    return {
        "name": name,
        "namespace": md["metadata"]["namespace"],
        "labels": labels(md, component, version),
        "annotations": {},
        "ownerReferences": [owner_reference(md)],
    }


def _http_probe(path: str, port: int, *, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _pod_security(uid: int) -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _resources(given: Mapping[str, Any] | None, default: dict[str, dict[str, str]]) -> Manifest:
    if not given:
        return default
    return {key: {name: str(value) for name, value in given[key].items()} for key in ("requests", "limits") if given.get(key)}


def _number(value: float | int) -> str:
    """100.0 -> "100", 12.5 -> "12.5": what a person would write in the ConfigMap."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _with_hash(manifest: Manifest) -> Manifest:
    manifest["metadata"]["annotations"][APPLIED_HASH] = _digest(manifest)
    return manifest


def applied_hash(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH)


__all__ = [
    "APPLIED_HASH",
    "BATCH_CONTAINER",
    "GATEWAY_PORT",
    "MODEL_PORT",
    "OWNER_LABEL",
    "applied_hash",
    "batch_command",
    "child_name",
    "desired_children",
    "feedback_secret",
    "gateway_config",
    "labels",
    "owner_reference",
]
