"""Promotion and rollback: when a shadow replaces production, and how that is written down.

The ModelDeployment is the source of truth, so a promotion is an edit of its spec, not a
state hidden in the operator: `spec.production.version` and `.image` take the shadow's,
and `spec.shadow` is removed. A rejected shadow is removed from the spec the same way. The
operator never fights the user's spec: it only changes it at these moments, with the
object's resourceVersion as a precondition, so an edit made in between wins and is
looked at again. `kubectl get md` then shows what runs.

Each change carries a record in an annotation, written in the same request as the spec
edit: `modelcycle.io/last-promotion` or `modelcycle.io/last-rollback`, a JSON object with
an id, the versions before and after, the reason and the time. The operator copies the
record into `status.lastPromotion` / `status.lastRollback` and posts the Event once per id,
so an operator killed between the edit and the status write still records the change
when it comes back, and never twice in status.

`modelcycle md promote | rollback` (`cli`) change the same fields: promote sets
`spec.shadow.approved`; rollback removes the shadow, or puts back the production version
recorded by the last promotion.

The verdict itself comes from the gateway's `GET /shadow/comparison` (a
`modelcycle.monitoring.shadow.ShadowComparison`), computed with the thresholds of
`spec.promotion` (`shadow_policy`), which the operator gives the gateway in a mounted file.
`decide` turns it and the promotion policy into an action. This module does no I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from modelcycle.monitoring.shadow import ShadowPolicy

LAST_PROMOTION = "modelcycle.io/last-promotion"
LAST_ROLLBACK = "modelcycle.io/last-rollback"
GATEWAY_URL = "modelcycle.io/gateway-url"
"""Annotation that overrides where the operator reads the comparison (normally the
`<name>-gateway` Service): for an operator outside the cluster, or a gateway run by hand."""

POLICY_FIELDS = {
    "minRequests": "min_requests",
    "minAgreement": "min_agreement",
    "maxLatencyRatio": "max_latency_ratio",
    "maxErrorRate": "max_error_rate",
}
"""spec.promotion field -> the `ShadowPolicy` field it sets. The defaults are ShadowPolicy's
alone; the CRD repeats them for `kubectl explain`, and a test keeps the two equal."""

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of a Go duration such as ``90s``, ``10m`` or ``1h30m`` (the CRD's pattern)."""
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"expected a duration such as 30s, 10m or 1h30m, found {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


@dataclass(frozen=True)
class ChangeRecord:
    """One promotion or rollback, as kept in an annotation and in status."""

    id: str
    from_: str
    to: str
    reason: str
    at: str
    fromImage: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("from_")
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChangeRecord:
        return cls(
            id=str(data["id"]), from_=str(data["from"]), to=str(data["to"]), reason=str(data["reason"]),
            at=str(data["at"]), fromImage=data.get("fromImage"),
        )

    @classmethod
    def new(cls, *, from_: str, to: str, reason: str, from_image: str | None = None,
            now: dt.datetime | None = None) -> ChangeRecord:
        at = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(id=uuid.uuid4().hex[:12], from_=from_, to=to, reason=reason, at=at, fromImage=from_image)


def read_record(md: Mapping[str, Any], annotation: str) -> ChangeRecord | None:
    """The record in `annotation`, or None when absent or not a record (then it is ignored)."""
    raw = (md.get("metadata", {}).get("annotations") or {}).get(annotation)
    if not raw:
        return None
    try:
        return ChangeRecord.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


def promotion_patch(md: Mapping[str, Any], *, reason: str, served: Sequence[str] = ()) -> dict[str, Any]:
    """A merge patch that makes the shadow production and records it; fails with 409 if the
    object changed since `md` was read. A shadow given as an alias (challenger) is promoted
    as the one version number the gateway saw it serve (`served`), so production never
    follows an alias that moves later."""
    spec = md["spec"]
    shadow = spec["shadow"]
    version = shadow["version"]
    if not str(version).isdigit() and len(served) == 1 and str(served[0]).isdigit():
        version = int(served[0])
    record = ChangeRecord.new(
        from_=str(spec["production"]["version"]), to=str(version), reason=reason,
        from_image=spec["production"].get("image"),
    )
    # No image (a registry-served side) removes production's: the model server serves it.
    production: dict[str, Any] = {"version": version, "image": shadow.get("image")}
    if shadow.get("resources"):
        production["resources"] = shadow["resources"]
    return {
        "metadata": {
            "resourceVersion": md["metadata"]["resourceVersion"],
            "annotations": {LAST_PROMOTION: json.dumps(record.to_json())},
        },
        "spec": {"production": production, "shadow": None},
    }


def shadow_removal_patch(md: Mapping[str, Any], *, reason: str) -> dict[str, Any]:
    """A merge patch that removes the shadow and records the rollback."""
    spec = md["spec"]
    record = ChangeRecord.new(
        from_=str(spec["production"]["version"]), to=str(spec["shadow"]["version"]), reason=reason,
    )
    return {
        "metadata": {
            "resourceVersion": md["metadata"]["resourceVersion"],
            "annotations": {LAST_ROLLBACK: json.dumps(record.to_json())},
        },
        "spec": {"shadow": None},
    }


def restore_patch(md: Mapping[str, Any], *, reason: str) -> dict[str, Any]:
    """A merge patch that puts back the production version the last promotion replaced."""
    promotion = read_record(md, LAST_PROMOTION)
    if promotion is None or not (promotion.fromImage or md["spec"].get("registry")):
        raise ValueError("no promotion recorded (annotation modelcycle.io/last-promotion): nothing to roll back to")
    current = str(md["spec"]["production"]["version"])
    if current != promotion.to:
        raise ValueError(
            f"production runs version {current}, not {promotion.to} that the last promotion made; "
            "roll back by editing spec.production"
        )
    record = ChangeRecord.new(from_=current, to=promotion.from_, reason=reason, from_image=md["spec"]["production"].get("image"))
    version: int | str = int(promotion.from_) if promotion.from_.isdigit() else promotion.from_
    return {
        "metadata": {
            "resourceVersion": md["metadata"]["resourceVersion"],
            "annotations": {LAST_ROLLBACK: json.dumps(record.to_json())},
        },
        "spec": {"production": {"version": version, "image": promotion.fromImage}},
    }


Action = Literal["promote", "reject", "wait"]


@dataclass(frozen=True)
class Decision:
    """What to do with the shadow now, and why (for status, Events and the log)."""

    action: Action
    reason: str
    wait_s: float | None = None
    """For a wait on minDuration: seconds until it has passed."""


def shadow_policy(promotion: Mapping[str, Any]) -> ShadowPolicy:
    """The `ShadowPolicy` that spec.promotion asks for: its thresholds where set, the
    policy's own defaults elsewhere. The CRD checks the same bounds, so a spec the API
    server admitted always gives a policy."""
    return ShadowPolicy(**{field: promotion[name] for name, field in POLICY_FIELDS.items() if name in promotion})


def policy_mismatches(promotion: Mapping[str, Any], comparison: Mapping[str, Any]) -> list[str]:
    """The thresholds in which the gateway's policy differs from spec.promotion."""
    policy = comparison.get("policy") or {}
    spec_policy = shadow_policy(promotion)
    found = []
    for spec_field, policy_field in POLICY_FIELDS.items():
        wanted = float(getattr(spec_policy, policy_field))
        actual = policy.get(policy_field)
        if actual is None or abs(float(actual) - wanted) > 1e-9 * max(1.0, abs(wanted)):
            found.append(f"{policy_field} is {actual} in the gateway, {wanted:g} in spec.promotion.{spec_field}")
    return found


def decide(
    spec: Mapping[str, Any],
    comparison: Mapping[str, Any] | None,
    *,
    shadow_ready_since: dt.datetime | None,
    now: dt.datetime,
) -> Decision:
    """The action for a shadow given the latest comparison (None when it could not be read).

    A conclusive reject removes the shadow in both modes. Promotion needs a ready shadow
    and either an approval (`spec.shadow.approved`) or, in auto mode, a promote verdict held
    for at least minDuration since the shadow became ready. A comparison made with other
    thresholds than spec.promotion, or about another shadow version, is not acted on.
    """
    shadow = spec["shadow"]
    promotion = spec.get("promotion") or {}
    if comparison is not None:
        mismatches = policy_mismatches(promotion, comparison)
        if mismatches:
            return Decision("wait", "the gateway's comparison uses other thresholds: " + "; ".join(mismatches))
        version = str(shadow["version"])
        seen = [str(v) for v in comparison.get("shadow_versions") or []]
        if version.isdigit() and seen and version not in seen:
            return Decision("wait", f"the gateway's comparison is about shadow versions {seen}, not {version}")
        verdict = comparison.get("verdict")
        reasons = "; ".join(comparison.get("reasons") or [])
        if verdict == "reject":
            return Decision("reject", f"shadow rejected: {reasons}")
    else:
        verdict = None
    if shadow_ready_since is None:
        return Decision("wait", "the shadow is not ready yet")
    if shadow.get("approved"):
        return Decision("promote", "approved by spec.shadow.approved")
    if comparison is None:
        return Decision("wait", "no shadow comparison from the gateway yet")
    if promotion.get("mode", "manual") == "manual":
        if verdict == "promote":
            return Decision("wait", "verdict promote; waiting for approval (spec.shadow.approved)")
        return Decision("wait", f"verdict {verdict}: {reasons}")
    if verdict != "promote":
        return Decision("wait", f"verdict {verdict}: {reasons}")
    remaining = parse_duration(promotion.get("minDuration", "10m")) - (now - shadow_ready_since).total_seconds()
    if remaining > 0:
        return Decision("wait", f"verdict promote; minDuration has {remaining:.0f} s to go", wait_s=remaining)
    return Decision("promote", f"verdict promote: {reasons}")


def comparison_summary(comparison: Mapping[str, Any], *, shadow_version: str) -> dict[str, Any]:
    """The part of a ShadowComparison kept in status.comparison."""

    def value(key: str) -> float | None:
        estimate = comparison.get(key)
        return None if estimate is None else round(float(estimate["value"]), 4)

    summary = {
        "verdict": comparison.get("verdict"),
        "reasons": list(comparison.get("reasons") or []),
        "agreement": value("agreement"),
        "latencyRatio": value("latency_ratio_p50"),
        "productionErrorRate": value("production_error_rate"),
        "shadowErrorRate": value("shadow_error_rate"),
        "requests": comparison.get("requests"),
        "comparedRequests": comparison.get("compared_requests"),
        "shadowVersion": shadow_version,
        "computedAt": _rfc3339(comparison.get("computed_at")),
    }
    return {key: item for key, item in summary.items() if item is not None}


def _rfc3339(value: Any) -> str | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
