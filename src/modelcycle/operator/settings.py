"""Settings of the operator process, read once from its environment at start.

The chart sets these as environment variables of the operator's container; a developer
running `python -m modelcycle.operator` on a laptop sets the ones that differ from the
defaults. Everything about one served model lives in its `ModelDeployment` instead.
"""

from __future__ import annotations

import os
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

    concurrency: int = 32
    """`MODELCYCLE_CONCURRENCY`: ModelDeployments reconciled at the same time. A first
    pass is five applies and a status write; 32 keeps a loaded API server busy (the bench:
    500 created at once on 2 cores) without queueing thousands of requests in it."""

    gateway_url_annotation: bool = False
    """`MODELCYCLE_GATEWAY_URL_ANNOTATION` (true/false): honour the ModelDeployment annotation
    `modelcycle.io/gateway-url`, which points the operator at another gateway address (an
    operator outside the cluster, a gateway run by hand). Off by default: with it, anyone
    who may create a ModelDeployment could make the operator fetch any URL it can reach.
    Off, the operator reads only the `<name>-gateway` Service it created."""

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
            comparison_interval_s=_float("MODELCYCLE_COMPARISON_INTERVAL", cls.comparison_interval_s),
            gateway_timeout_s=_float("MODELCYCLE_GATEWAY_TIMEOUT", cls.gateway_timeout_s),
            concurrency=_int("MODELCYCLE_CONCURRENCY", cls.concurrency),
            gateway_url_annotation=_bool("MODELCYCLE_GATEWAY_URL_ANNOTATION", cls.gateway_url_annotation),
        )
