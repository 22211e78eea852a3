"""The kopf face of the operator: what it watches, and where events go.

- ModelDeployments: every event hands the body to the `Reconciler`, which wakes that
  object's loop (`reconciling`).
- Deployments, Services, ConfigMaps and CronJobs labelled `app.kubernetes.io/managed-by:
  modelcycle-operator` (the selector is sent to the API server, so nothing else is
  watched): kopf keeps a summary of each in an index keyed by owner, and every event wakes
  the owner's loop. kopf runs no handler before every index is filled from the initial
  listing, so after a restart the first pass already sees every child that exists.

Only `@kopf.on.event` and `@kopf.index` are used: they add no finalizer and write no
annotation, so the operator's only writes are its own (children, status, promotions).
kopf still computes, for every event, a deep copy of the body to diff it with the last
handled one, which only its change handlers need: `NoDiffBase` skips it (a fifth of the
operator's CPU under a burst). The index functions are coroutines, though they await
nothing: kopf runs a plain function in a thread, and the hop there and back for every
event of every child cost more than the function itself.

`MODELCYCLE_SELECTOR` narrows the watch of ModelDeployments on the API server, for a split
of the work over several operators; `MODELCYCLE_LEASE_NAME` elects one active replica
among several (`leadership`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import kopf

from modelcycle.operator import resources, statuses
from modelcycle.operator.clients import KubeClient
from modelcycle.operator.leadership import LEADER, Leadership
from modelcycle.operator.reconciling import Key, Reconciler
from modelcycle.operator.settings import GROUP, MANAGED_BY, PLURAL, VERSION, OperatorSettings

CHILD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
CHILD_KINDS = (("apps", "v1", "deployments"), ("v1", "services"), ("v1", "configmaps"), ("batch", "v1", "cronjobs"))
BATCH_POD_SELECTOR = f"{CHILD_SELECTOR},app.kubernetes.io/component=batch"
BATCH_POD_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": "batch"}
INDEXES = ("child_deployments", "child_services", "child_configmaps", "child_cronjobs", "batch_pods")


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: with event and index handlers only, kopf diffs nothing, and building
    the base deep-copies every body of every event."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator = OperatorSettings.from_env()
    for kind in CHILD_KINDS:
        settings.watching.label_selectors[kind] = CHILD_SELECTOR
    settings.watching.label_selectors[("v1", "pods")] = BATCH_POD_SELECTOR
    if operator.selector:
        settings.watching.label_selectors[(GROUP, VERSION, PLURAL)] = operator.selector
    settings.persistence.diffbase_storage = NoDiffBase()
    # No watching of CRDs and namespaces for changes: the served namespaces are named, and
    # the CRD is installed before the operator (the chart's crds/). This spares the RBAC
    # any cluster-wide read of namespaces and CRDs.
    settings.scanning.disabled = True
    settings.posting.reporting_component = "modelcycle-operator"
    settings.posting.reporting_instance = operator.identity
    memo.operator = operator
    memo.client = KubeClient()
    memo.indexes = {}
    memo.leadership = memo.elector = None
    if operator.lease_name:
        memo.leadership = Leadership(
            client=memo.client, namespace=operator.lease_namespace, name=operator.lease_name,
            identity=operator.identity, duration_s=operator.lease_duration_s, renew_s=operator.renew_interval_s,
            on_gain=lambda: memo.reconciler.wake_all(),
        )
        memo.client.may_write = memo.leadership.held
        memo.elector = asyncio.get_running_loop().create_task(memo.leadership.run(), name="leader election")
    else:
        LEADER.set(1)
    memo.reconciler = Reconciler(
        settings=operator, client=memo.client, children=lambda key: _children(memo, key),
        leading=memo.leadership.held if memo.leadership else lambda: True, instance=operator.identity,
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await memo.reconciler.close()
    if memo.elector is not None:
        memo.elector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await memo.elector
        await memo.leadership.release()
    await memo.client.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The same credentials as the operator's own client (`clients`)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _summary(namespace: str | None, labels: kopf.Labels, body: kopf.Body) -> dict[Key, statuses.Summary] | None:
    owner = labels.get(resources.OWNER_LABEL)
    if owner is None or namespace is None:
        return None
    return {(namespace, owner): statuses.summarize(body)}


@kopf.index("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def child_deployments(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return _summary(namespace, labels, body)


@kopf.index("v1", "services", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def child_services(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return _summary(namespace, labels, body)


@kopf.index("v1", "configmaps", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def child_configmaps(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return _summary(namespace, labels, body)


@kopf.index("batch", "v1", "cronjobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def child_cronjobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return _summary(namespace, labels, body)


@kopf.index("v1", "pods", labels=BATCH_POD_LABELS)
async def batch_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return _summary(namespace, labels, body)


def _children(memo: kopf.Memo, key: Key) -> list[statuses.Summary]:
    found: list[statuses.Summary] = []
    for index in memo.indexes.values():
        found.extend(index.get(key, ()))
    return found


def _remember_indexes(memo: kopf.Memo, kwargs: dict[str, Any]) -> None:
    # kopf gives each object a shallow copy of the memo: fill the shared dict in place.
    if not memo.indexes:
        memo.indexes.update({name: kwargs[name] for name in INDEXES})


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_deployment_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    _remember_indexes(memo, kwargs)
    memo.reconciler.observe(type, body)


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
@kopf.on.event("v1", "services", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
@kopf.on.event("v1", "configmaps", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
@kopf.on.event("batch", "v1", "cronjobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
@kopf.on.event("v1", "pods", labels=BATCH_POD_LABELS)
async def child_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    _remember_indexes(memo, kwargs)
    memo.reconciler.child_changed(type, body)
