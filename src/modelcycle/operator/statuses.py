"""A ModelDeployment's status, computed from its spec, its children and its records.

Conditions follow `metav1.Condition`: one per part (ProductionReady, GatewayReady,
ShadowReady), the shadow's verdict (ShadowVerdict), and Ready, which rolls up the parts
that exist. A part is ready when its Deployment carries the manifest the operator applied
for the current spec (its applied-hash) and its rollout is complete, the test
`kubectl rollout status` makes: the controller saw the latest generation, every replica
is updated and available, and no old replica is left.

With `spec.batch`, `status.batch` says whether the schedule is suspended and what the last
finished run did (`lastRun`): from the most recently finished pod of the CronJob's Jobs,
its exit code and the summary line `modelcycle predict` wrote to its termination message
(rows, predicted, rejected, seconds), or, when the run failed before writing it, the tail
of its log that Kubernetes put there instead. The last run stays in status after its Job
is gone.

`lastTransitionTime` changes only when a condition's status does, so writing the same
status again is a no-op the operator can skip. These are plain functions: no API access.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

from modelcycle.operator.promotion import LAST_PROMOTION, LAST_ROLLBACK, ChangeRecord, read_record
from modelcycle.operator.resources import APPLIED_HASH, BATCH_CONTAINER, child_name

Summary = dict[str, Any]
"""What the operator's cache keeps of a child (`summarize`)."""


def summarize(body: Mapping[str, Any]) -> Summary:
    """The few fields of a child the status needs, so the cache stays small."""
    meta = body.get("metadata", {})
    summary: Summary = {
        "kind": body.get("kind"),
        "name": meta.get("name"),
        "hash": (meta.get("annotations") or {}).get(APPLIED_HASH),
    }
    if body.get("kind") == "Deployment":
        spec, status = body.get("spec", {}), body.get("status") or {}
        summary.update(
            generation=meta.get("generation"),
            observedGeneration=status.get("observedGeneration"),
            replicas=spec.get("replicas", 1),
            statusReplicas=status.get("replicas", 0),
            updatedReplicas=status.get("updatedReplicas", 0),
            readyReplicas=status.get("readyReplicas", 0),
            availableReplicas=status.get("availableReplicas", 0),
        )
    elif body.get("kind") == "Pod":
        summary.update(job=(meta.get("labels") or {}).get("job-name"), **_terminated(body))
    return summary


def _terminated(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The batch container's end: exit code, times and termination message; {} while it runs."""
    for item in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (item.get("state") or {}).get("terminated")
        if item.get("name") == BATCH_CONTAINER and terminated:
            return {"exitCode": terminated.get("exitCode"), "startedAt": terminated.get("startedAt"),
                    "finishedAt": terminated.get("finishedAt"), "message": terminated.get("message") or ""}
    return {}


def last_run(runs: Iterable[Summary]) -> dict[str, Any] | None:
    """`status.batch.lastRun` from the latest finished batch pod, or None if none has finished."""
    finished = [run for run in runs if run.get("finishedAt")]
    if not finished:
        return None
    run = max(finished, key=lambda r: (r["finishedAt"], r["name"]))
    result: dict[str, Any] = {"job": run.get("job") or run["name"], "pod": run["name"],
                              "exitCode": run["exitCode"], "finishedAt": run["finishedAt"],
                              "succeeded": run["exitCode"] == 0}
    try:
        summary = json.loads(run["message"])
    except ValueError:
        summary = None
    # The message is the container's to write: only figures of the expected types reach the status.
    if isinstance(summary, dict) and all(_count(summary.get(key)) for key in ("rows", "predicted", "rejected")):
        result.update({key: summary[key] for key in ("rows", "predicted", "rejected")})
        if isinstance(summary.get("version"), str):
            result["version"] = summary["version"]
        if isinstance(summary.get("seconds"), int | float) and not isinstance(summary["seconds"], bool):
            result["durationSeconds"] = summary["seconds"]
    else:
        # No summary: the run failed before the end; Kubernetes put its log's tail there instead.
        result["message"] = run["message"].strip()[-1000:] or f"exited with code {run['exitCode']} and no message"
        started = _time(run.get("startedAt"))
        ended = _time(run["finishedAt"])
        if started and ended:
            result["durationSeconds"] = (ended - started).total_seconds()
    return result


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _time(value: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def rollout(deployment: Summary | None, wanted_hash: str | None) -> tuple[bool, str, str]:
    """(complete, reason, message) of a Deployment's rollout towards `wanted_hash`."""
    if deployment is None:
        return False, "Creating", "the Deployment does not exist yet"
    if wanted_hash is not None and deployment["hash"] != wanted_hash:
        return False, "Updating", "the Deployment does not have the current spec yet"
    wanted = deployment["replicas"]
    # The message names the step, not the pod counts: each count change would be a status
    # write, and `kubectl get deploy` shows the counts.
    if (deployment["observedGeneration"] or 0) < (deployment["generation"] or 0):
        return False, "RollingOut", "waiting for the deployment controller to see the change"
    if deployment["updatedReplicas"] < wanted or deployment["statusReplicas"] > deployment["updatedReplicas"]:
        return False, "RollingOut", f"replacing pods with {wanted} of the current spec"
    if deployment["availableReplicas"] < wanted:
        return False, "RollingOut", f"waiting for {wanted} pods to be available"
    return True, "RolledOut", f"{wanted}/{wanted} pods available"


def condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int,
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    old = previous.get(type_)
    changed = old is None or old.get("status") != status
    return {
        "type": type_,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": now if changed else old["lastTransitionTime"],
        "reason": reason,
        "message": message,
    }


def shadow_ready_since(md: Mapping[str, Any]) -> dt.datetime | None:
    """When the current shadow became ready, from the status last written; None if not ready."""
    shadow = md["spec"].get("shadow")
    status = md.get("status") or {}
    if not shadow or (status.get("shadow") or {}).get("version") != str(shadow["version"]):
        return None
    for item in status.get("conditions") or []:
        if item["type"] == "ShadowReady" and item["status"] == "True":
            return dt.datetime.fromisoformat(item["lastTransitionTime"].replace("Z", "+00:00"))
    return None


def build_status(
    md: Mapping[str, Any],
    *,
    children: Mapping[tuple[str, str], Summary],
    wanted_hashes: Mapping[tuple[str, str], str],
    comparison: Mapping[str, Any] | None,
    verdict: tuple[str, str, str] | None,
    now: dt.datetime,
    runs: Iterable[Summary] = (),
) -> dict[str, Any]:
    """The whole status. `verdict` is (status, reason, message) of ShadowVerdict while a
    shadow exists; `comparison` the summary to keep (the previous one if None)."""
    name = md["metadata"]["name"]
    generation = md["metadata"].get("generation", 0)
    spec = md["spec"]
    old = md.get("status") or {}
    previous = {item["type"]: item for item in old.get("conditions") or []}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")

    def part(component: str, side: Mapping[str, Any]) -> tuple[bool, str, str, dict[str, Any]]:
        key = ("Deployment", child_name(name, component))
        deployment = children.get(key)
        done, reason, message = rollout(deployment, wanted_hashes.get(key))
        version = f"version {side['version']}: " if "version" in side else ""
        observed = {
            "replicas": int(side.get("replicas", 1)),
            "readyReplicas": int(deployment["readyReplicas"]) if deployment else 0,
        }
        return done, reason, version + message, observed

    conditions = []
    production = spec["production"]
    prod_ok, prod_reason, prod_message, prod_observed = part("production", production)
    conditions.append(condition("ProductionReady", _tf(prod_ok), prod_reason, prod_message,
                                generation=generation, previous=previous, now=stamp))
    gw_ok, gw_reason, gw_message, _ = part("gateway", {})
    conditions.append(condition("GatewayReady", _tf(gw_ok), gw_reason, gw_message,
                                generation=generation, previous=previous, now=stamp))
    shadow = spec.get("shadow")
    if shadow:
        sh_ok, sh_reason, sh_message, sh_observed = part("shadow", shadow)
        conditions.append(condition("ShadowReady", _tf(sh_ok), sh_reason, sh_message,
                                    generation=generation, previous=previous, now=stamp))
        v_status, v_reason, v_message = verdict or ("Unknown", "Waiting", "the shadow is not compared yet")
    else:
        sh_ok = True
        conditions.append(condition("ShadowReady", "False", "NoShadow", "spec.shadow is not set",
                                    generation=generation, previous=previous, now=stamp))
        v_status, v_reason, v_message = _last_outcome(md)
    conditions.append(condition("ShadowVerdict", v_status, v_reason, v_message,
                                generation=generation, previous=previous, now=stamp))

    parts = [("production", prod_ok, prod_message), ("gateway", gw_ok, gw_message)]
    if shadow:
        parts.append(("shadow", sh_ok, sh_message))
    waiting = [f"{label}: {message}" for label, ok, message in parts if not ok]
    if waiting:
        ready = condition("Ready", "False", "RollingOut", "; ".join(waiting),
                          generation=generation, previous=previous, now=stamp)
    else:
        summary = f"production version {production['version']} serving"
        if shadow:
            summary += (
                f"; shadow version {shadow['version']} mirrored {shadow.get('mirrorPercent', 100):g}%"
                f", verdict {v_reason}"
            )
        ready = condition("Ready", "True", "Ready", summary, generation=generation, previous=previous, now=stamp)
    conditions.append(ready)

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conditions,
        "production": {"version": str(production["version"]), "image": production.get("image", ""), **prod_observed},
    }
    if shadow:
        status["shadow"] = {"version": str(shadow["version"]), "image": shadow.get("image", ""), **sh_observed}
    if comparison is not None:
        status["comparison"] = dict(comparison)
    elif old.get("comparison"):
        status["comparison"] = old["comparison"]
    batch = spec.get("batch")
    if batch:
        status["batch"] = {"schedule": batch["schedule"], "suspended": bool(batch.get("suspend", False))}
        latest = last_run(runs)
        kept = (old.get("batch") or {}).get("lastRun")
        if latest is None or (kept and kept.get("finishedAt", "") > latest["finishedAt"]):
            latest = kept
        if latest:
            status["batch"]["lastRun"] = latest
    for field, annotation in (("lastPromotion", LAST_PROMOTION), ("lastRollback", LAST_ROLLBACK)):
        record = read_record(md, annotation)
        if record is not None:
            status[field] = record.to_json()
        elif old.get(field):
            status[field] = old[field]
    return status


def _last_outcome(md: Mapping[str, Any]) -> tuple[str, str, str]:
    """ShadowVerdict without a shadow: what became of the last one."""
    promotion = read_record(md, LAST_PROMOTION)
    rollback = read_record(md, LAST_ROLLBACK)
    latest: ChangeRecord | None = max(
        (record for record in (promotion, rollback) if record is not None), key=lambda r: r.at, default=None
    )
    if latest is None:
        return "Unknown", "NoShadow", "spec.shadow is not set"
    if latest is promotion:
        return "True", "Promoted", f"version {latest.to} promoted at {latest.at}: {latest.reason}"
    return "False", "RolledBack", f"rolled back at {latest.at}: {latest.reason}"


def _tf(ok: bool) -> str:
    return "True" if ok else "False"
