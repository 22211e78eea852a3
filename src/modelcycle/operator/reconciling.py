"""Reconciling: one level-triggered loop per ModelDeployment, woken by any change.

kopf watches ModelDeployments and their children and keeps the children in its indexes
(`handlers`). Every event only *wakes* the ModelDeployment's loop; the loop then looks at
the whole current state (the latest body, the indexed children) and converges:

1. apply, with server-side apply, every child whose manifest differs from what the cached
   child carries, and delete children the spec no longer asks for (a removed shadow);
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

Why not kopf timers or daemons: kopf puts a finalizer on every object that has one, and
then a ModelDeployment cannot be deleted while the operator is down. Here nothing but the
status (and the spec, on promotion) is written to a ModelDeployment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
from prometheus_client import Histogram

from modelcycle.operator import promotion, resources, statuses
from modelcycle.operator.clients import ApiError, KubeClient
from modelcycle.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a ModelDeployment."""
ChildKey = tuple[str, str]
"""(kind, name) of a child."""

RECONCILE_SECONDS = Histogram(
    "modelcycle_operator_reconcile_seconds", "Time of one reconcile pass of a ModelDeployment.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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


class Reconciler:
    """The loops of every ModelDeployment the operator serves."""

    def __init__(
        self,
        *,
        settings: OperatorSettings,
        client: KubeClient,
        children: Callable[[Key], Iterable[statuses.Summary]],
    ) -> None:
        self.settings = settings
        self.client = client
        self._children = children
        self._states: dict[Key, _State] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._http: aiohttp.ClientSession | None = None

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
        if event_type == "DELETED":
            state.applied.pop((body["kind"], meta["name"]), None)
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
            async with self._slots:
                started = asyncio.get_running_loop().time()
                try:
                    delay = await self.reconcile(key, state)
                    state.failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    delays = self.settings.retry_delays_s
                    delay = 0.2 if isinstance(error, ApiError) and error.status == 409 else delays[min(state.failures, len(delays) - 1)]
                    state.failures += 1
                    logger.warning("reconcile of %s/%s failed (retry in %.1f s): %s", *key, delay, error)
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

        desired = resources.desired_children(md, gateway_image=self.settings.gateway_image)
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
        self._post_records(md, state)
        status = statuses.build_status(
            md, children=children, wanted_hashes=wanted, comparison=state.comparison, verdict=verdict, now=now,
            runs=runs,
        )
        self._post_batch_run(md, status)
        await self._write_status(md, state, status)
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
        if not todo:
            return {}
        results = await asyncio.gather(*(self.client.apply(manifest) for manifest in todo))
        applied = {}
        for manifest, result in zip(todo, results, strict=True):
            key = (manifest["kind"], manifest["metadata"]["name"])
            state.applied[key] = resources.applied_hash(manifest) or ""
            applied[key] = statuses.summarize(result)
            component = manifest["metadata"]["labels"]["app.kubernetes.io/component"]
            if manifest["kind"] == "Deployment" and component != "gateway":
                side = md["spec"][component]
                kopf.info(md, reason="Rollout", message=(
                    f"{component} version {side['version']} ({side['image']}, {side.get('replicas', 1)} replicas) "
                    f"{'created' if key not in children else 'updated'}"
                ))
            elif manifest["kind"] == "ConfigMap" and key in children:
                kopf.info(md, reason="GatewayConfigured", message=_routing(manifest["data"]))
        return applied

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
                md["metadata"]["namespace"], name, promotion.promotion_patch(md, reason=decision.reason)
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
        annotations = md["metadata"].get("annotations") or {}
        service = (f"http://{resources.child_name(md['metadata']['name'], 'gateway')}."
                   f"{md['metadata']['namespace']}.svc:{resources.GATEWAY_PORT}")
        override = annotations.get(promotion.GATEWAY_URL)
        ignored = ""
        if override and not self.settings.gateway_url_annotation:
            override = None
            ignored = (f"; annotation {promotion.GATEWAY_URL} ignored: this operator runs with "
                       "MODELCYCLE_GATEWAY_URL_ANNOTATION off")
        url = (override or service).rstrip("/") + "/shadow/comparison"
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

    def _post_records(self, md: dict[str, Any], state: _State) -> None:
        """Post the Event of a promotion or rollback record not yet in status (nor posted by
        this process: the status write may still be on its way back through the watch)."""
        old = md.get("status") or {}
        for field_name, annotation, reason, poster in (
            ("lastPromotion", promotion.LAST_PROMOTION, "Promoted", kopf.info),
            ("lastRollback", promotion.LAST_ROLLBACK, "RolledBack", kopf.warn),
        ):
            record = promotion.read_record(md, annotation)
            if record is not None and (old.get(field_name) or {}).get("id") != record.id and record.id not in state.posted:
                state.posted.add(record.id)
                poster(md, reason=reason, message=f"version {record.from_} -> {record.to}: {record.reason}")
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
        message = f"reconcile failed, retrying: {error}"[:2000]
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

    async def _write_status(self, md: dict[str, Any], state: _State, status: dict[str, Any]) -> None:
        old = md.get("status") or {}
        if _same(old, status):
            return
        patch = {**status, **{key: None for key in old if key not in status}}
        result = await self.client.patch_status(md["metadata"]["namespace"], md["metadata"]["name"], patch)
        if result is not None and not _older(result, state.body):
            state.body = result


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
