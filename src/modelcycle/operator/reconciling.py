"""Reconciling: one level-triggered loop per ModelDeployment, woken by any change.

kopf watches ModelDeployments and their children and keeps the children in its indexes
(`handlers`). Every event only *wakes* the ModelDeployment's loop; the loop then looks at
the whole current state (the latest body, the indexed children) and converges:

1. apply, with server-side apply, every child whose manifest differs from what the cached
   child carries, and delete children the spec no longer asks for (a removed shadow); the
   gateway's feedback Secret is created instead, once per process, and never read;
2. while a shadow is ready, read the gateway's shadow comparison and decide: promote or
   remove the shadow by editing the spec (`promotion`), or wait;
3. post the Events of new promotion and rollback records and of a finished batch run,
   and write the status if it differs from the one the object has.

Nothing depends on which event woke the loop or on what happened before a restart: a
killed operator re-reads everything when it starts, and the same state gives the same
actions. Children have fixed names and are applied, never created, so no restart can
duplicate one. Events that arrive while a pass runs are folded into one more pass. A
failed pass is retried with growing delays. A ModelDeployment without a shadow has no
timer: once converged, it costs no request until something changes. With a shadow, the
loop wakes every `comparison_interval_s` to read the comparison.

Under a burst the writes are what costs, so a pass writes no more than it must. A child
whose applied-hash is as wanted is not applied again (after a restart too). A child's
event wakes the loop only when it changes what the operator keeps of the child
(`statuses.summarize`): a Deployment's status is rewritten several times per rollout,
mostly in fields the status does not show. A status that differs only in progress (a
part's condition, which Ready rolls up, a message, a ready-replica count, the comparison's
figures) waits `progress_interval_s` after the previous write of the same
ModelDeployment (a new one's first status, after it was first seen), while a transition
(Ready's or the verdict's status or reason, a version, a record) is written at once: a
ModelDeployment of a burst that is Ready within that time gets one status write. The
Event of a promotion or rollback is named after the record's id, so neither a restart nor
a second replica can post it twice.

With several replicas, only the holder of the Lease (`leadership`) runs passes; the
others keep their loops and caches up to date, and run a pass for every ModelDeployment
when they take over.

Why not kopf timers or daemons: kopf puts a finalizer on every object that has one, and
then a ModelDeployment cannot be deleted while the operator is down. Here nothing but the
status (and the spec, on promotion) is written to a ModelDeployment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
from prometheus_client import Counter, Histogram

from modelcycle.operator import promotion, resources, retraining, statuses
from modelcycle.operator.clients import ApiError, KubeClient, NotLeader
from modelcycle.operator.settings import FIELD_MANAGER, OperatorSettings

logger = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a ModelDeployment."""
ChildKey = tuple[str, str]
"""(kind, name) of a child."""

RECONCILE_SECONDS = Histogram(
    "modelcycle_operator_reconcile_seconds", "Time of one reconcile pass of a ModelDeployment.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_FAILURES = Counter(
    "modelcycle_operator_reconcile_failures", "Reconcile passes that failed (and are retried).",
)


@dataclass
class _State:
    """What the operator knows of one ModelDeployment between passes."""

    body: dict[str, Any] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    applied: dict[ChildKey, str] = field(default_factory=dict)
    """Hash of the manifest last applied per child, until the watch brings the child back."""
    failures: int = 0
    posted: set[str] = field(default_factory=set)
    """Ids of the promotion and rollback records whose Event this process posted."""
    comparison: dict[str, Any] | None = None
    """The latest comparison summary read, kept for the status after a promotion removed the shadow."""
    seen: dict[ChildKey, statuses.Summary] = field(default_factory=dict)
    """What the last event or apply answer of each child said: an event that says the same wakes nothing."""
    status_written_at: float = float("-inf")
    """Monotonic time of this process's last status write of the object (progress waits after it)."""
    created_at: float = field(default_factory=time.monotonic)
    """When this process first saw the object: a first status that is only progress waits after it."""
    feedback_secret: bool = False
    """Whether this process made sure the gateway's feedback Secret exists (created, or found)."""


class Reconciler:
    """The loops of every ModelDeployment the operator serves."""

    def __init__(
        self,
        *,
        settings: OperatorSettings,
        client: KubeClient,
        children: Callable[[Key], Iterable[statuses.Summary]],
        leading: Callable[[], bool] = lambda: True,
        instance: str = "",
    ) -> None:
        self.settings = settings
        self.client = client
        self._children = children
        self._leading = leading
        self._instance = instance
        self._states: dict[Key, _State] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._http: aiohttp.ClientSession | None = None
        self.monitor = retraining.Monitor(client=client, image=settings.gateway_image, read_gateway=self._read_gateway,
                                          post_event=self._post_event, kfp_runner=_kfp_runner)

    # -- what the handlers call ---------------------------------------------------------

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A ModelDeployment was listed, added, changed or deleted."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event_type == "DELETED":
            state = self._states.pop(key, None)
            if state is not None and state.task is not None:
                state.task.cancel()
            return
        state = self._state(key)
        if not _older(body, state.body):
            state.body = _plain(body)
        state.wake.set()

    def child_changed(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A child was listed, added, changed or deleted: look at its owner again."""
        meta = body["metadata"]
        owner = (meta.get("labels") or {}).get(resources.OWNER_LABEL)
        key = (meta["namespace"], owner)
        state = self._states.get(key)
        if owner is None or state is None:
            return
        key = (body["kind"], meta["name"])
        if event_type == "DELETED":
            state.applied.pop(key, None)
            state.seen.pop(key, None)
        else:
            summary = statuses.summarize(body)
            if state.seen.get(key) == summary:
                return
            state.seen[key] = summary
        state.wake.set()

    def wake_all(self) -> None:
        """Run a pass for every ModelDeployment (this replica has just taken over)."""
        for state in self._states.values():
            state.wake.set()

    async def close(self) -> None:
        for state in self._states.values():
            if state.task is not None:
                state.task.cancel()
        tasks = [state.task for state in self._states.values() if state.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # -- the loop -------------------------------------------------------------------------

    def _state(self, key: Key) -> _State:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State()
            # Created from kopf's handler, the task inherits its context, which is what
            # kopf.info() and kopf.warn() need to post Events.
            state.task = asyncio.get_running_loop().create_task(self._loop(key, state), name=f"reconcile {key[0]}/{key[1]}")
        return state

    async def _loop(self, key: Key, state: _State) -> None:
        delay: float | None = None
        while True:
            try:
                await asyncio.wait_for(state.wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            state.wake.clear()
            if not self._leading():
                delay = None  # a standby: `wake_all` runs the pass when it takes over
                continue
            async with self._slots:
                started = asyncio.get_running_loop().time()
                try:
                    delay = await self.reconcile(key, state)
                    state.failures = 0
                except asyncio.CancelledError:
                    raise
                except NotLeader:
                    delay = None
                except Exception as error:
                    delays = self.settings.retry_delays_s
                    delay = 0.2 if isinstance(error, ApiError) and error.status == 409 else delays[min(state.failures, len(delays) - 1)]
                    state.failures += 1
                    RECONCILE_FAILURES.inc()
                    logger.warning("reconcile of %s/%s failed (retry in %.1f s): %s", *key, delay,
                                   str(error) or type(error).__name__)
                    await self._report_failure(state, error)
                finally:
                    RECONCILE_SECONDS.observe(asyncio.get_running_loop().time() - started)

    async def reconcile(self, key: Key, state: _State) -> float | None:
        """One pass; the seconds until the next one unless something changes (None: never)."""
        md = state.body
        if md is None or md["metadata"].get("deletionTimestamp"):
            return None
        namespace, name = key
        found = list(self._children(key))
        # Batch pods are the CronJob's runs, not children the operator applies: they only feed the status.
        runs = [child for child in found if child["kind"] == "Pod"]
        children = {(child["kind"], child["name"]): child for child in found if child["kind"] != "Pod"}

        desired = resources.desired_children(md, gateway_image=self.settings.gateway_image,
                                             trusted_keys=self.settings.trusted_keys)
        wanted = {(m["kind"], m["metadata"]["name"]): resources.applied_hash(m) or "" for m in desired}
        # What the API server answered to an apply is newer than the cache: use it now, so
        # the status written in this pass does not say "does not exist yet" for a child
        # that was just created.
        children.update(await self._apply(md, state, desired, children))
        for kind, child in children:
            if (kind, child) not in wanted:
                api_version = {"Deployment": "apps/v1", "CronJob": "batch/v1"}.get(kind, "v1")
                await self.client.delete(api_version, kind, namespace, child)
                state.applied.pop((kind, child), None)
                logger.info("%s/%s: deleted %s %s, which the spec no longer asks for", namespace, name, kind, child)

        now = dt.datetime.now(dt.UTC)
        comparison, verdict, requeue = None, None, None
        if md["spec"].get("shadow"):
            comparison, verdict, requeue, edited = await self._judge_shadow(md, children, wanted, now)
            state.comparison = comparison or state.comparison
            if edited is not None:
                state.body = edited
                return 0.0
        # spec.monitoring: the gateway's drift on schedule, and a retraining run on a breach.
        watch = await self.monitor.check(md, now)
        if watch.edited is not None:
            state.body = watch.edited
            return 0.0
        await self._post_records(md, state)
        status = statuses.build_status(
            md, children=children, wanted_hashes=wanted, comparison=state.comparison, verdict=verdict, now=now,
            runs=runs,
        )
        if watch.drifted is not None:
            retraining.add_to_status(status, md, watch, now=now)
            requeue = watch.requeue if requeue is None else min(requeue, watch.requeue)
        self._post_batch_run(md, status)
        deferred = await self._write_status(md, state, status)
        if deferred is not None:
            requeue = deferred if requeue is None else min(requeue, deferred)
        return requeue

    async def _apply(
        self,
        md: dict[str, Any],
        state: _State,
        desired: list[dict[str, Any]],
        children: Mapping[ChildKey, statuses.Summary],
    ) -> dict[ChildKey, statuses.Summary]:
        """Apply the children that differ; the summaries of the applied ones."""
        todo = []
        for manifest in desired:
            key = (manifest["kind"], manifest["metadata"]["name"])
            wanted = resources.applied_hash(manifest)
            # The cache has it as wanted, or it was applied and the watch has not brought it
            # back yet (a deleted child is forgotten in `child_changed`, so it is re-created).
            if children.get(key, {}).get("hash") == wanted or state.applied.get(key) == wanted:
                continue
            todo.append(manifest)
        # In three rounds. First the model servers' Deployments, whose rollouts take longest,
        # with what the gateway's pod reads at start: its ConfigMap and the feedback Secret
        # (created once with a random token and never read back: a 409 means it exists; not
        # even tried once the gateway's Deployment exists, so a restart sends no request for it). Then the gateway's Deployment; last the Services, which roll nothing out
        # and cost the API server most (a ClusterIP each). Under a burst the requests queue
        # in the client's pool in that order, so the Deployments of a burst start rolling
        # out before its Services are created. The pass, and so Ready, waits for all three.
        gateway = ("Deployment", resources.child_name(md["metadata"]["name"], "gateway"))
        services = [m for m in todo if m["kind"] == "Service"]
        second = [m for m in todo if (m["kind"], m["metadata"]["name"]) == gateway]
        first = [m for m in todo if m not in services and m not in second]
        if gateway in children:  # its pod mounts the Secret: made before it, by this or an earlier process
            state.feedback_secret = True
        results = await asyncio.gather(*(self.client.apply(manifest) for manifest in first),
                                       self._feedback_secret(md, state))
        results = results[:len(first)]
        for batch in (second, services):
            results += await asyncio.gather(*(self.client.apply(manifest) for manifest in batch))
        todo = first + second + services
        applied = {}
        for manifest, result in zip(todo, results, strict=True):
            key = (manifest["kind"], manifest["metadata"]["name"])
            state.applied[key] = resources.applied_hash(manifest) or ""
            applied[key] = state.seen[key] = statuses.summarize(result)
            component = manifest["metadata"]["labels"]["app.kubernetes.io/component"]
            if manifest["kind"] == "Deployment" and component != "gateway":
                side = md["spec"][component]
                kopf.info(md, reason="Rollout", message=(
                    f"{component} version {side['version']} ({side.get('image') or 'model server from ' + md['spec'].get('registry', '')}, {side.get('replicas', 1)} replicas) "
                    f"{'created' if key not in children else 'updated'}"
                ))
            elif manifest["kind"] == "ConfigMap" and key in children:
                kopf.info(md, reason="GatewayConfigured", message=_routing(manifest["data"]))
        return applied

    async def _feedback_secret(self, md: Mapping[str, Any], state: _State) -> None:
        if not state.feedback_secret:
            await self.client.create(resources.feedback_secret(md))
            state.feedback_secret = True

    async def _judge_shadow(
        self,
        md: dict[str, Any],
        children: Mapping[ChildKey, statuses.Summary],
        wanted: Mapping[ChildKey, str],
        now: dt.datetime,
    ) -> tuple[dict[str, Any] | None, tuple[str, str, str], float | None, dict[str, Any] | None]:
        """(comparison summary, ShadowVerdict, requeue, edited body if the spec was changed)."""
        name = md["metadata"]["name"]
        shadow = md["spec"]["shadow"]
        interval = self.settings.comparison_interval_s
        gateway_done, _, _ = statuses.rollout(
            children.get(("Deployment", resources.child_name(name, "gateway"))),
            wanted.get(("Deployment", resources.child_name(name, "gateway"))),
        )
        shadow_done, _, _ = statuses.rollout(
            children.get(("Deployment", resources.child_name(name, "shadow"))),
            wanted.get(("Deployment", resources.child_name(name, "shadow"))),
        )
        if not (gateway_done and shadow_done):
            return None, ("Unknown", "Waiting", "waiting for the shadow and the gateway to roll out"), None, None
        raw, error = await self._read_comparison(md)
        summary = None if raw is None else promotion.comparison_summary(raw, shadow_version=str(shadow["version"]))
        decision = promotion.decide(md["spec"], raw, shadow_ready_since=statuses.shadow_ready_since(md), now=now)
        if decision.action == "wait" and raw is None and error:
            decision = promotion.Decision("wait", f"{decision.reason} ({error})")
        if decision.action == "promote":
            edited = await self.client.patch_md(
                md["metadata"]["namespace"], name, promotion.promotion_patch(
                    md, reason=decision.reason, served=[str(v) for v in (raw or {}).get("shadow_versions") or []])
            )
            return summary, ("True", "Promoted", decision.reason), None, edited
        if decision.action == "reject":
            edited = await self.client.patch_md(
                md["metadata"]["namespace"], name, promotion.shadow_removal_patch(md, reason=decision.reason)
            )
            return summary, ("False", "Rejected", decision.reason), None, edited
        verdict = (raw or {}).get("verdict")
        state = {"promote": ("True", "Promote"), "hold": ("Unknown", "Hold")}.get(verdict or "", ("Unknown", "Waiting"))
        requeue = interval if decision.wait_s is None else min(interval, max(decision.wait_s, 0.1))
        return summary, (*state, decision.reason), requeue, None

    async def _read_comparison(self, md: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """The gateway's ShadowComparison as JSON, or (None, what went wrong)."""
        return await self._read_gateway(md, "/shadow/comparison")

    async def _post_event(self, md: Mapping[str, Any], **event: Any) -> bool:
        return await self.client.post_event(md, component=FIELD_MANAGER, instance=self._instance, **event)

    async def _read_gateway(self, md: Mapping[str, Any], path: str) -> tuple[dict[str, Any] | None, str | None]:
        """GET `path` of the ModelDeployment's gateway as JSON, or (None, what went wrong)."""
        annotations = md["metadata"].get("annotations") or {}
        service = (f"http://{resources.child_name(md['metadata']['name'], 'gateway')}."
                   f"{md['metadata']['namespace']}.svc:{resources.GATEWAY_PORT}")
        override = annotations.get(promotion.GATEWAY_URL)
        ignored = ""
        if override and not self.settings.gateway_url_annotation:
            override = None
            ignored = (f"; annotation {promotion.GATEWAY_URL} ignored: this operator runs with "
                       "MODELCYCLE_GATEWAY_URL_ANNOTATION off")
        url = (override or service).rstrip("/") + path
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.gateway_timeout_s))
        try:
            async with self._http.get(url) as answer:
                if answer.status != 200:
                    # The body stays in the operator's log: status is readable by whoever may read the
                    # resource, and the answer comes from whatever the URL points at.
                    logger.warning("%s answered HTTP %s: %s", url, answer.status, (await answer.text())[:500])
                    return None, f"{url} answered HTTP {answer.status}{ignored}"
                return await answer.json(), None
        except (aiohttp.ClientConnectionError, TimeoutError) as error:  # says which host and why, nothing it sent
            return None, f"cannot read {url}: {str(error)[:200] or type(error).__name__}{ignored}"
        except aiohttp.ClientError as error:
            return None, f"cannot read {url}: {type(error).__name__}{ignored}"
        except ValueError:
            return None, f"{url} did not answer JSON{ignored}"

    async def _post_records(self, md: dict[str, Any], state: _State) -> None:
        """Post the Event of a promotion or rollback record not yet in status (nor posted by
        this process: the status write may still be on its way back through the watch).
        The Event's name is the record's, so one posted before a crash or by a replica that
        has since died is not posted again."""
        old = md.get("status") or {}
        for field_name, annotation, reason, type_ in (
            ("lastPromotion", promotion.LAST_PROMOTION, "Promoted", "Normal"),
            ("lastRollback", promotion.LAST_ROLLBACK, "RolledBack", "Warning"),
        ):
            record = promotion.read_record(md, annotation)
            if record is not None and (old.get(field_name) or {}).get("id") != record.id and record.id not in state.posted:
                posted = await self.client.post_event(
                    md, name=f"{md['metadata']['name']}.{reason.lower()}.{record.id}", type_=type_, reason=reason,
                    message=f"version {record.from_} -> {record.to}: {record.reason}",
                    component=FIELD_MANAGER, instance=self._instance,
                )
                state.posted.add(record.id)
                if posted:
                    logger.info("%s/%s: %s %s -> %s: %s", md["metadata"]["namespace"], md["metadata"]["name"],
                                reason.lower(), record.from_, record.to, record.reason)

    def _post_batch_run(self, md: dict[str, Any], status: Mapping[str, Any]) -> None:
        """An Event when `status.batch.lastRun` is about a run the status did not show yet."""
        run = (status.get("batch") or {}).get("lastRun")
        known = ((md.get("status") or {}).get("batch") or {}).get("lastRun") or {}
        if not run or (known.get("pod"), known.get("finishedAt"), known.get("exitCode")) == (
                run["pod"], run["finishedAt"], run["exitCode"]):
            return
        if "rows" in run:
            message = (f"job {run['job']}: {run['predicted']:,} of {run['rows']:,} records predicted, "
                       f"{run['rejected']:,} rejected, in {run.get('durationSeconds', 0):.1f}s")
        else:
            message = f"job {run['job']} exited with code {run['exitCode']}: {run['message'][-300:]}"
        (kopf.info if run["succeeded"] else kopf.warn)(md, reason="BatchRun", message=message)

    async def _report_failure(self, state: _State, error: Exception) -> None:
        """Show a failed pass in the Ready condition and an Event, once per distinct error,
        so that `kubectl get md` says why nothing happens. Best effort: it may fail too."""
        md = state.body
        if md is None or (isinstance(error, ApiError) and error.status == 409):
            return
        message = f"reconcile failed, retrying: {str(error) or type(error).__name__}"[:2000]
        old = md.get("status") or {}
        conditions = [c for c in old.get("conditions") or [] if c["type"] != "Ready"]
        previous = next((c for c in old.get("conditions") or [] if c["type"] == "Ready"), None)
        if previous is not None and previous["message"] == message:
            return
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        conditions.append(statuses.condition(
            "Ready", "False", "ReconcileFailed", message, generation=md["metadata"].get("generation", 0),
            previous={c["type"]: c for c in old.get("conditions") or []}, now=now,
        ))
        kopf.warn(md, reason="ReconcileFailed", message=message)
        try:
            result = await self.client.patch_status(md["metadata"]["namespace"], md["metadata"]["name"],
                                                    {"conditions": conditions})
        except Exception as again:
            logger.warning("cannot report the failure in status either: %s", again)
            return
        if result is not None and not _older(result, state.body):
            state.body = result

    async def _write_status(self, md: dict[str, Any], state: _State, status: dict[str, Any]) -> float | None:
        """Write the status if it differs; None, or the seconds a progress-only change waits."""
        old = md.get("status") or {}
        if _same(old, status):
            return None
        now = time.monotonic()
        if old:
            wait = state.status_written_at + self.settings.progress_interval_s - now
            progress = _same(_transitions(old), _transitions(status))
        else:
            # A new object's first status: RollingOut is progress, so an object Ready within
            # the interval (one applied alone, on a quiet cluster) gets one status write.
            wait = state.created_at + self.settings.progress_interval_s - now
            progress = _ready(status) != "True"
        if wait > 0 and progress:
            return wait
        patch = {**status, **{key: None for key in old if key not in status}}
        state.status_written_at = now
        result = await self.client.patch_status(md["metadata"]["namespace"], md["metadata"]["name"], patch)
        if result is not None and not _older(result, state.body):
            state.body = result
        return None


_kfp_runners: dict[tuple[str, str | None], Any] = {}


def _kfp_runner(md: Mapping[str, Any]) -> Any:
    """The KFP client of `spec.monitoring.retrain.kfp` (`host`, and on a multi-user Kubeflow
    the profile `namespace`), one per both, with the pod's service-account token (KFP in
    the cluster accepts it) when there is one."""
    import os

    from modelcycle.operator.kfp_runs import KfpRunner

    kfp = md["spec"]["monitoring"]["retrain"]["kfp"]
    key = (kfp["host"], kfp.get("namespace"))
    if key not in _kfp_runners:
        token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
        _kfp_runners[key] = KfpRunner(kfp["host"], namespace=kfp.get("namespace"),
                                      token_file=token if os.path.exists(token) else None)
    return _kfp_runners[key]


def _older(body: Mapping[str, Any], known: Mapping[str, Any] | None) -> bool:
    """Whether a watch event brings an older version than the one the operator holds: after
    a status write the operator holds the API server's answer, and events from before the
    write may still be on their way. resourceVersions are etcd revisions, compared as
    numbers when they are numbers; otherwise the event is taken."""
    if known is None:
        return False
    new, old = body["metadata"].get("resourceVersion", ""), known["metadata"].get("resourceVersion", "")
    return new.isdigit() and old.isdigit() and int(new) < int(old)


def _same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change nothing (ignoring fields only `old` has a None for)."""
    return {k: v for k, v in old.items() if v is not None} == {k: v for k, v in new.items() if v is not None}


_PARTS = ("ProductionReady", "GatewayReady", "ShadowReady")


def _ready(status: Mapping[str, Any]) -> str | None:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), None)


def _transitions(status: Mapping[str, Any]) -> dict[str, Any]:
    """A status without its progress: the parts' conditions (Ready rolls them up), the
    conditions' messages, ready-replica counts, the comparison's figures (not its verdict)."""
    view = dict(status)
    view["conditions"] = [{k: c.get(k) for k in ("type", "status", "reason", "observedGeneration")}
                          for c in status.get("conditions") or [] if c["type"] not in _PARTS]
    for side in ("production", "shadow"):
        if isinstance(status.get(side), Mapping):
            view[side] = {k: v for k, v in status[side].items() if k != "readyReplicas"}
    if isinstance(status.get("comparison"), Mapping):
        view["comparison"] = {"verdict": status["comparison"].get("verdict"),
                              "shadowVersion": status["comparison"].get("shadowVersion")}
    return view


def _routing(data: Mapping[str, str]) -> str:
    if "SHADOW_URL" in data:
        return f"gateway mirrors {data['MIRROR_PERCENT']}% of requests to {data['SHADOW_URL']}"
    return "gateway sends every request to production only"


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy as plain dicts and lists (kopf's bodies are live views)."""
    if isinstance(body, Mapping):
        return {key: _plain(value) for key, value in body.items()}
    if isinstance(body, list):
        return [_plain(item) for item in body]
    return body  # type: ignore[return-value]
