"""Settings of the operator process, read once from its environment at start.

The chart sets these as environment variables of the operator's container; a developer
running `python -m modelcycle.operator` on a laptop sets the ones that differ from the
defaults. Everything about one served model lives in its `ModelDeployment` instead.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field

GROUP, VERSION, PLURAL, KIND = "modelcycle.io", "v1alpha1", "modeldeployments", "ModelDeployment"
FIELD_MANAGER = "modelcycle-operator"
"""The server-side apply field manager of every child, and the manager of the spec fields a
promotion or rollback changes."""
MANAGED_BY = "modelcycle-operator"
"""`app.kubernetes.io/managed-by` of every child; the operator watches only these."""


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a number of seconds, found {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name}: expected a number of seconds above 0, found {raw!r}")
    return value


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a whole number, found {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name}: expected a whole number above 0, found {raw!r}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{name}: expected true or false, found {os.environ[name]!r}")


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator runs. `from_env()` reads the `MODELCYCLE_*` variables named below."""

    namespaces: tuple[str, ...] = ()
    """`MODELCYCLE_NAMESPACES`, comma-separated: the namespaces to serve. Empty serves the
    whole cluster, which needs the chart's ClusterRole."""

    trusted_keys: str = ""
    """`MODELCYCLE_TRUSTED_KEYS`: the public keys (PEM text) that vouch for model versions.
    The operator gives them to every model server and batch pod it renders, which verify a
    version's signature with them before unpickling it (`modelcycle.signing`); the chart's
    `signing.trustedKeys`. A ModelDeployment's `registrySecret` may bring its own."""
    gateway_image: str = "modelcycle/modelcycle-python:0.1.0"
    """`MODELCYCLE_GATEWAY_IMAGE`: the modelcycle image (the repository's Dockerfile), which
    runs the gateway as `python -m modelcycle.serving.gateway` and a scheduled batch
    (`spec.batch`) as `modelcycle predict`."""

    comparison_interval_s: float = 10.0
    """`MODELCYCLE_COMPARISON_INTERVAL`: seconds between two reads of the gateway's shadow
    comparison while a shadow is ready. The gateway recomputes it at most every 5 s, so
    reading more often only returns the same figures. Nothing is polled without a shadow."""

    gateway_timeout_s: float = 5.0
    """`MODELCYCLE_GATEWAY_TIMEOUT`: seconds one read of the comparison may take. Computing
    it reads the whole prediction log, which takes a second or two on a large log."""

    concurrency: int = 512
    """`MODELCYCLE_CONCURRENCY`: ModelDeployments reconciled at the same time. A pass
    mostly waits for the API server (in the bench's bursts the operator's event loop is
    busy a quarter of the time), and the client's pools of connections (`clients`) bound
    the requests in flight, so a burst queues in the operator, not in the API server. With
    fewer slots, a pass that only writes a Ready status waited for a slot behind passes
    whose applies waited for a connection: 15 to 40 s at a burst of 500."""

    gateway_url_annotation: bool = False
    """`MODELCYCLE_GATEWAY_URL_ANNOTATION` (true/false): honour the ModelDeployment annotation
    `modelcycle.io/gateway-url`, which points the operator at another gateway address (an
    operator outside the cluster, a gateway run by hand). Off by default: with it, anyone
    who may create a ModelDeployment could make the operator fetch any URL it can reach.
    Off, the operator reads only the `<name>-gateway` Service it created."""

    selector: str = ""
    """`MODELCYCLE_SELECTOR`: a label selector (`shard=a`, `team in (fraud,risk)`) sent to the
    API server with the watch of ModelDeployments, so this operator sees and serves only the
    ModelDeployments it selects. Empty serves every one in its namespaces. With several
    operators, give each a disjoint selector (or disjoint namespaces): two operators serving
    the same ModelDeployment would fight over it."""

    progress_interval_s: float = 5.0
    """`MODELCYCLE_PROGRESS_INTERVAL`: seconds a status write that changes only progress
    (a part's condition, a message, a ready-replica count) waits after the previous write
    of the same ModelDeployment. A transition (Ready's or the verdict's status or reason, a
    version, a record) is written at once. Under a burst of hundreds, a Deployment moves through three or four
    rollout steps in a few seconds; writing each step doubled the operator's requests."""

    lease_name: str = ""
    """`MODELCYCLE_LEASE_NAME`: the coordination.k8s.io Lease that elects one active replica
    among several (`leadership`). Empty: no election, this process acts alone."""

    lease_namespace: str = ""
    """`MODELCYCLE_LEASE_NAMESPACE`: the Lease's namespace, normally the operator's own
    (the chart sets it from the pod). Empty: the first served namespace."""

    identity: str = ""
    """`MODELCYCLE_POD_NAME`: this replica's name in the Lease (`holderIdentity`). The chart
    sets the pod's name; empty: the host name and a random suffix."""

    lease_duration_s: float = 15.0
    """`MODELCYCLE_LEASE_DURATION`: seconds without a renewal after which a standby takes the
    Lease over: the bound on a takeover after the active replica dies. client-go's default:
    long enough that an API server's brief stall does not flip the leader."""

    renew_interval_s: float = 5.0
    """`MODELCYCLE_LEASE_RENEW_INTERVAL`: seconds between two renewals by the active replica
    (a third of the duration: two renewals may fail before anyone else may take over). The
    active replica stops acting two thirds into the duration without a renewal, a third
    before a standby may start."""

    retry_delays_s: tuple[float, ...] = field(default=(1.0, 2.0, 5.0, 10.0, 30.0))
    """Delays before retrying a failed reconcile, the last one repeated: a conflict or a
    brief API outage heals within seconds, a lasting one is retried without flooding."""

    @classmethod
    def from_env(cls) -> OperatorSettings:
        namespaces = tuple(
            part.strip() for part in os.environ.get("MODELCYCLE_NAMESPACES", "").split(",") if part.strip()
        )
        return cls(
            namespaces=namespaces,
            gateway_image=os.environ.get("MODELCYCLE_GATEWAY_IMAGE") or cls.gateway_image,
            trusted_keys=os.environ.get("MODELCYCLE_TRUSTED_KEYS", "").strip(),
            comparison_interval_s=_float("MODELCYCLE_COMPARISON_INTERVAL", cls.comparison_interval_s),
            gateway_timeout_s=_float("MODELCYCLE_GATEWAY_TIMEOUT", cls.gateway_timeout_s),
            concurrency=_int("MODELCYCLE_CONCURRENCY", cls.concurrency),
            gateway_url_annotation=_bool("MODELCYCLE_GATEWAY_URL_ANNOTATION", cls.gateway_url_annotation),
            selector=os.environ.get("MODELCYCLE_SELECTOR", "").strip(),
            progress_interval_s=_float("MODELCYCLE_PROGRESS_INTERVAL", cls.progress_interval_s),
            lease_name=os.environ.get("MODELCYCLE_LEASE_NAME", "").strip(),
            lease_namespace=os.environ.get("MODELCYCLE_LEASE_NAMESPACE", "").strip() or (namespaces[0] if namespaces else ""),
            identity=os.environ.get("MODELCYCLE_POD_NAME", "").strip()
            or f"{socket.gethostname()}_{secrets.token_hex(4)}",
            lease_duration_s=_float("MODELCYCLE_LEASE_DURATION", cls.lease_duration_s),
            renew_interval_s=_float("MODELCYCLE_LEASE_RENEW_INTERVAL", cls.renew_interval_s),
        )

    def __post_init__(self) -> None:
        if self.lease_name and not self.lease_namespace:
            raise ValueError("MODELCYCLE_LEASE_NAMESPACE: expected the Lease's namespace (MODELCYCLE_LEASE_NAME is "
                             "set and MODELCYCLE_NAMESPACES is empty), found nothing")
        if self.renew_interval_s * 1.5 >= self.lease_duration_s:
            raise ValueError(f"MODELCYCLE_LEASE_RENEW_INTERVAL: expected under two thirds of MODELCYCLE_LEASE_DURATION "
                             f"({self.lease_duration_s:g} s), found {self.renew_interval_s:g} s")
