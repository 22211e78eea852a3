"""The closed loop on Kubernetes: `spec.monitoring` read from the gateway, and a retraining run
started on a breach.

On `spec.monitoring.schedule` (a five-field cron expression, or ``@every 30s`` style), the
operator reads the gateway's ``GET /monitoring``: drift of every input column and of the
model's scores, data quality, and the live metrics on labelled rows, over the window of the
production version's reference profile. It writes what it found into ``status.monitoring``
and the ``Drifted`` condition (``DataDrift``, ``PerformanceBreach`` or ``NoDrift``), and
posts a ``DriftDetected`` Warning Event when the condition turns True.

With ``spec.monitoring.retrain.enabled``, a breach the guard rails admit
(`modelcycle.monitoring.retraining`: one at a time, ``cooldown``, ``maxPerDay``, a window of at
least ``minRows`` live rows, the same functions `modelcycle loop` uses) starts one retraining
run, recorded in ``status.retraining.attempts``:

- ``runner: job`` (the default): a Job ``<name>-retrain-<n>`` that runs ``modelcycle run``
  in the modelcycle image on the spec in ``specConfigMap``, with the data store and registry
  URLs, credentials from ``secretName``; the command writes its result (the registered
  version and whether it passed its gates) to the termination message;
- ``runner: kfp``: a Kubeflow Pipelines run of the uploaded pipeline ``pipeline``, through
  the KFP v2beta1 API at ``kfp.host`` (`modelcycle.operator.kfp_runs`).

The Job's name (and the KFP run's name) carries the attempt's number, so an operator that
dies between starting a run and recording it finds the same run again instead of starting
a second. A run that registers a version which passed its gates makes it the shadow
(``spec.shadow.version``, served by the model-server image from ``spec.registry``), and the
promotion gate decides as for any shadow. A run refused by validation (exit code 4), a
version that failed a gate (3) or any other failure leaves production as it was; the
attempt says why. Its end is read from the pod's container state: a pod that exits 0
without the result line (`modelcycle run` always writes one) is waited for until the Job's
deadline.

These functions compute; `Monitor.check` is the one that reads and writes.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelcycle.monitoring.retraining import RUN_RESULT_ENV, Attempt, admit, breach
from modelcycle.operator import resources
from modelcycle.spec import RetrainSpec

logger = logging.getLogger(__name__)

RETRAIN_CONTAINER = "retrain"
SPEC_MOUNT = "/etc/modelcycle/spec"
SPEC_KEY = "modelcycle.yaml"
EXIT_REJECTED, EXIT_INVALID_DATA = 3, 4
CHALLENGER = "challenger"
KEEP_ATTEMPTS = 10
"""Attempts kept in status; the daily cap needs no more than a day's worth."""
POLL_S = 10.0
"""Seconds between two looks at a running retraining."""
DEFAULT_DEADLINE_S = 4 * 3600
_EVERY = re.compile(r"^@every\s+(?P<n>[0-9]+(\.[0-9]+)?)(?P<unit>s|m|h)$")


def next_check(schedule: str, last: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    """When the monitoring check after `last` is due (`now` when there was none)."""
    if last is None:
        return now
    if m := _EVERY.match(schedule.strip()):
        return last + dt.timedelta(seconds=float(m["n"]) * {"s": 1, "m": 60, "h": 3600}[m["unit"]])
    from cronsim import CronSim

    return next(CronSim(schedule, last.astimezone(dt.UTC)))


def retrain_policy(monitoring: Mapping[str, Any]) -> RetrainSpec:
    retrain = monitoring.get("retrain") or {}
    return RetrainSpec(triggers=retrain.get("triggers", ["drift", "performance"]),
                       cooldown=retrain.get("cooldown", "6h"), max_per_day=retrain.get("maxPerDay", 3),
                       min_rows=retrain.get("minRows", 500))


def job_name(md_name: str, number: int) -> str:
    return f"{md_name}-retrain-{number}"


def retrain_job(md: Mapping[str, Any], number: int, *, image: str) -> dict[str, Any]:
    """The Job that runs the pipeline once, in the modelcycle image."""
    meta, spec = md["metadata"], md["spec"]
    retrain = spec["monitoring"]["retrain"]
    name = job_name(meta["name"], number)
    labels = {**resources.labels(md, "retrain"), "modelcycle.io/attempt": str(number)}
    command = ["modelcycle", "run", f"{SPEC_MOUNT}/{SPEC_KEY}", "--workdir", "/tmp/modelcycle",
               "--registry", spec["registry"]]
    if retrain.get("storeUri"):
        command += ["--store", retrain["storeUri"]]
    container: dict[str, Any] = {
        "name": RETRAIN_CONTAINER,
        "image": retrain.get("image") or image,
        "command": command,
        "env": [{"name": RUN_RESULT_ENV, "value": resources.TERMINATION_LOG},
                {"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}],
        "terminationMessagePath": resources.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": resources._resources(retrain.get("resources"), resources.BATCH_RESOURCES),
        "securityContext": resources._container_security(),
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    if retrain.get("secretName"):
        container["envFrom"] = [{"secretRef": {"name": retrain["secretName"]}}]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                     "ownerReferences": [resources.owner_reference(md)]},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(retrain.get("deadlineSeconds", DEFAULT_DEADLINE_S)),
            "ttlSecondsAfterFinished": 7 * 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": resources._pod_security(resources.GATEWAY_UID),
                    "containers": [container],
                    "volumes": [{"name": "spec", "configMap": {"name": retrain["specConfigMap"],
                                                               "items": [{"key": SPEC_KEY, "path": SPEC_KEY}]}},
                                {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}}],
                },
            },
        },
    }


def run_outcome(exit_code: int, message: str) -> dict[str, Any] | None:
    """What a finished run's container says: {outcome, version, message}; None while a pod
    that exited 0 has not shown its result line yet."""
    result = None
    for line in reversed(message.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    if exit_code == 0:
        if not isinstance(result, dict) or not isinstance(result.get("model_version"), str):
            return None
        version = int(result["model_version"].rpartition("@")[2])
        if result.get("status") == "rejected":
            return {"outcome": "rejected", "version": version, "message": f"version {version} failed its gates"}
        return {"outcome": "shadow", "version": version,
                "message": f"version {version} passed its gates; it is the shadow"}
    tail = " ".join(message.strip().splitlines()[-3:])[:400]
    if exit_code == EXIT_INVALID_DATA:
        return {"outcome": "invalid_data", "version": None,
                "message": f"the newest data failed validation, nothing was trained on it: {tail}"}
    if exit_code == EXIT_REJECTED and isinstance(result, dict) and isinstance(result.get("model_version"), str):
        version = int(result["model_version"].rpartition("@")[2])
        return {"outcome": "rejected", "version": version, "message": f"version {version} failed its gates"}
    return {"outcome": "failed", "version": None, "message": f"the run failed with exit code {exit_code}: {tail}"}


def drifted_condition(result: Mapping[str, Any] | None, error: str | None) -> tuple[str, str, str]:
    """(status, reason, message) of the Drifted condition."""
    if result is None:
        return "Unknown", "NotMeasured", error or "the gateway has not been read yet"
    reasons = "; ".join(result.get("reasons") or [])[:900]
    if result["verdict"] == "drift":
        return "True", "DataDrift", reasons
    if result["verdict"] == "performance":
        return "True", "PerformanceBreach", reasons
    return "False", "NoDrift", reasons or f"no drift on {result.get('rows', 0)} live rows"


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def attempts_of(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(((status.get("retraining") or {}).get("attempts")) or [])


def as_attempt(record: Mapping[str, Any]) -> Attempt:
    return Attempt(trigger=record["trigger"], reasons=record.get("reasons") or [],
                   started_at=_parse(record["startedAt"]), finished_at=_parse(record.get("finishedAt")),
                   outcome=record["outcome"], version=record.get("version"), message=record.get("message", ""))


@dataclass
class MonitoringPass:
    """What one pass of `Monitor.check` found: status fields, the Drifted condition, when to look again."""

    monitoring: dict[str, Any] | None
    retraining: dict[str, Any] | None
    drifted: tuple[str, str, str] | None
    requeue: float | None
    edited: dict[str, Any] | None = None


class Monitor:
    """Reads the gateway and runs retrainings for the `Reconciler`; all its state is in status."""

    def __init__(self, *, client: Any, image: str, read_gateway: Callable[[Mapping[str, Any], str],
                 Awaitable[tuple[dict[str, Any] | None, str | None]]], post_event: Callable[..., Awaitable[Any]],
                 kfp_runner: Callable[[Mapping[str, Any]], Any] | None = None) -> None:
        self.client = client
        self.image = image
        self.read_gateway = read_gateway
        self.post_event = post_event
        self.kfp_runner = kfp_runner

    async def check(self, md: dict[str, Any], now: dt.datetime) -> MonitoringPass:
        spec, status = md["spec"], md.get("status") or {}
        monitoring = spec.get("monitoring")
        if not monitoring:
            return MonitoringPass(None, None, None, None)
        old = status.get("monitoring") or {}
        attempts = copy.deepcopy(attempts_of(status))
        requeue: float | None = None
        edited = None

        problem = None  # a retraining that cannot be started or followed must not stop production's reconciling
        running = next((a for a in attempts if a["outcome"] in ("training", "shadow")), None)
        if running is not None and running["outcome"] == "training":
            try:
                ended = await self._run_ended(md, running)
            except Exception as exc:  # noqa: BLE001 - said in status, tried again at the next poll
                logger.warning("%s/%s: cannot read retraining %s: %s", md["metadata"]["namespace"],
                               md["metadata"]["name"], running["number"], exc)
                ended, problem = None, f"cannot read retraining {running['number']}: {exc}"[:500]
            if ended is None:
                requeue = POLL_S
            else:
                running.update(ended)
                if ended["outcome"] != "shadow":
                    running["finishedAt"] = _stamp(now)
                else:
                    requeue = 0.1  # the status first, then the spec (next pass), so neither is done twice
                await self.post_event(md, name=f"{md['metadata']['name']}.retrain-{running['number']}.ended",
                                      type_="Normal" if ended["outcome"] == "shadow" else "Warning",
                                      reason="RetrainingEnded",
                                      message=f"retraining {running['number']}: {ended['message']}")
        elif running is not None:
            shadow = str((spec.get("shadow") or {}).get("version", ""))
            if not running.get("shadowSet"):
                if shadow == str(running["version"]):
                    running["shadowSet"] = True
                else:  # the registered version becomes the shadow, served from the registry (no bento
                    # image: one set by hand meanwhile would serve another version); the gate decides
                    edited = await self.client.patch_md(md["metadata"]["namespace"], md["metadata"]["name"], {
                        "spec": {"shadow": {"version": str(running["version"]), "image": None}}})
                    return MonitoringPass(None, None, None, 0.0, edited)
            elif shadow != str(running["version"]):  # promoted, or removed by the gate (or by hand)
                promoted = str(spec["production"]["version"]) == str(running["version"])
                running.update(outcome="promoted" if promoted else "rejected", finishedAt=_stamp(now),
                               message="promoted to production" if promoted else
                               "the shadow was removed without a promotion; production stays version "
                               f"{spec['production']['version']}")

        result, error = old.get("result"), None
        due = next_check(monitoring.get("schedule", "0 * * * *"), _parse(old.get("checkedAt")), now)
        checked_at = old.get("checkedAt")
        if due <= now:
            result, error = await self.read_gateway(md, "/monitoring")
            checked_at = _stamp(now)
            if result is not None:
                result = {"verdict": result["verdict"], "rows": int(result.get("rows", 0)),
                          "reasons": list(result.get("reasons") or [])[:10], "version": result.get("version")}
            due = next_check(monitoring.get("schedule", "0 * * * *"), now, now)
            retrain = monitoring.get("retrain") or {}
            if result is not None and retrain.get("enabled"):
                try:
                    started = await self._maybe_retrain(md, result, attempts, now)
                except Exception as exc:  # noqa: BLE001 - said in status, tried again at the next check
                    logger.warning("%s/%s: cannot start a retraining: %s", md["metadata"]["namespace"],
                                   md["metadata"]["name"], exc)
                    started, problem = None, f"cannot start a retraining: {exc}"[:500]
                if started is not None:
                    attempts.append(started)
                    requeue = POLL_S
        drifted = drifted_condition(result, error)
        if drifted[0] == "True" and old.get("drifted") != "True":
            await self.post_event(md, name=f"{md['metadata']['name']}.drift.{int(now.timestamp())}",
                                  type_="Warning", reason="DriftDetected",
                                  message=f"{drifted[1]} on {result['rows']} live rows: {drifted[2]}")
        wait = max((due - now).total_seconds(), 0.1)
        requeue = wait if requeue is None else min(requeue, wait)
        monitoring_status = {"checkedAt": checked_at, "nextCheckAt": _stamp(due), "drifted": drifted[0],
                             **({"result": result} if result is not None else {}),
                             **({"error": "; ".join(e for e in (error, problem) if e)} if error or problem else {})}
        return MonitoringPass(monitoring_status, {"attempts": attempts[-KEEP_ATTEMPTS:]} if attempts else None,
                              drifted, requeue, edited)

    async def _maybe_retrain(self, md: dict[str, Any], result: Mapping[str, Any], attempts: list[dict[str, Any]],
                             now: dt.datetime) -> dict[str, Any] | None:
        policy = retrain_policy(md["spec"]["monitoring"])
        trigger = breach(result["verdict"], result["rows"], policy)
        if trigger is None:
            return None
        if md["spec"].get("shadow"):
            logger.info("%s/%s: %s found, not retraining while a shadow is judged", md["metadata"]["namespace"],
                        md["metadata"]["name"], trigger)
            return None
        admission = admit([as_attempt(a) for a in attempts], policy, now=now)
        if not admission.allowed:
            logger.info("%s/%s: %s found, not retraining: %s", md["metadata"]["namespace"], md["metadata"]["name"],
                        trigger, admission.reason)
            return None
        number = max((a["number"] for a in attempts), default=0) + 1
        retrain = md["spec"]["monitoring"]["retrain"]
        record: dict[str, Any] = {"number": number, "trigger": trigger, "reasons": list(result["reasons"])[:5],
                                  "startedAt": _stamp(now), "outcome": "training", "runner": retrain.get("runner", "job")}
        if record["runner"] == "kfp":
            namespace = md["metadata"]["namespace"]
            config = await self.client.request(
                "GET", f"/api/v1/namespaces/{namespace}/configmaps/{retrain['specConfigMap']}", resource="configmaps",
                missing_ok=True)
            spec_yaml = ((config or {}).get("data") or {}).get(SPEC_KEY)
            if spec_yaml is None:
                raise ValueError(f"spec.monitoring.retrain.specConfigMap: ConfigMap {namespace}/"
                                 f"{retrain['specConfigMap']} has no key {SPEC_KEY!r}")
            runner = self.kfp_runner(md)
            run_id = await asyncio.get_running_loop().run_in_executor(None, lambda: runner.submit(
                # The uid's start: a ModelDeployment made again under the same name numbers from 1 again.
                pipeline=retrain["pipeline"],
                run_name=f"{job_name(md['metadata']['name'], number)}-{md['metadata'].get('uid', '')[:8]}",
                experiment=(retrain.get("kfp") or {}).get("experiment") or namespace,
                parameters=kfp_parameters(md, spec_yaml)))
            record["runId"] = run_id
        else:
            job = retrain_job(md, number, image=self.image)
            await self.client.apply(job)
            record["job"] = job["metadata"]["name"]
        await self.post_event(md, name=f"{md['metadata']['name']}.retrain-{number}.started", type_="Normal",
                              reason="RetrainingStarted", message=f"retraining {number} ({record['runner']} "
                              f"{record.get('job') or record.get('runId')}) on {trigger}: "
                              + "; ".join(result["reasons"])[:800])
        return record

    async def _run_ended(self, md: Mapping[str, Any], attempt: Mapping[str, Any]) -> dict[str, Any] | None:
        if attempt.get("runner") == "kfp":
            runner = self.kfp_runner(md)
            state = await asyncio.get_running_loop().run_in_executor(None, lambda: runner.state(attempt["runId"]))
            if state.state == "succeeded":
                if state.model_version:
                    return run_outcome(0, json.dumps({"model_version": state.model_version, "status": "registered"}))
                # KFP's v2beta1 API does not carry output parameters: the run's version is the
                # registry's challenger (a run whose version failed a gate moves no alias, and the
                # model server then serves the previous challenger, if any: see the README).
                return {"outcome": "shadow", "version": CHALLENGER,
                        "message": f"KFP run {attempt['runId']} succeeded; its version is the challenger"}
            if state.state == "failed":
                return {"outcome": "failed", "version": None, "message": f"KFP run failed: {state.message}"}
            return None
        namespace = md["metadata"]["namespace"]
        pods = await self.client.request("GET", f"/api/v1/namespaces/{namespace}/pods", resource="pods",
                                         params={"labelSelector": f"job-name={attempt['job']}"})
        for pod in (pods or {}).get("items", []):
            for item in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (item.get("state") or {}).get("terminated")
                if item.get("name") == RETRAIN_CONTAINER and terminated:
                    ended = run_outcome(int(terminated.get("exitCode", 1)), terminated.get("message") or "")
                    if ended is not None:
                        return ended
        job = await self.client.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{attempt['job']}",
                                        resource="jobs", missing_ok=True)
        if job is None:
            return {"outcome": "failed", "version": None, "message": f"Job {attempt['job']} is gone"}
        for item in (job.get("status") or {}).get("conditions") or []:
            if item.get("type") == "Failed" and item.get("status") == "True" and item.get("reason") == "DeadlineExceeded":
                return {"outcome": "failed", "version": None,
                        "message": f"Job {attempt['job']} passed its deadline: {item.get('message', '')}"[:400]}
        return None


def kfp_parameters(md: Mapping[str, Any], spec_yaml: str) -> dict[str, str]:
    """The training pipeline's parameters for a KFP run: the spec from `specConfigMap`, and
    the stores' URLs (data paths in the spec are URLs the run's pods reach)."""
    spec = md["spec"]
    retrain = spec["monitoring"]["retrain"]
    return {"spec_yaml": spec_yaml, "base_dir": "", "store_uri": retrain["storeUri"], "registry_uri": spec["registry"]}




def add_to_status(status: dict[str, Any], md: Mapping[str, Any], found: MonitoringPass, *, now: dt.datetime) -> None:
    """Put a monitoring pass into the status `statuses.build_status` made: `monitoring`,
    `retraining` and the Drifted condition."""
    from modelcycle.operator.statuses import condition

    assert found.drifted is not None
    old = md.get("status") or {}
    status["monitoring"] = found.monitoring
    if found.retraining is not None:
        status["retraining"] = found.retraining
    previous = {item["type"]: item for item in old.get("conditions") or []}
    status["conditions"].append(condition("Drifted", *found.drifted, generation=md["metadata"].get("generation", 0),
                                          previous=previous, now=_stamp(now)))
