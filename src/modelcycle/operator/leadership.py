"""Leadership: one active replica among several, elected with a coordination.k8s.io Lease.

Every replica runs kopf's watches and fills its caches, so a standby is warm: when it takes
over, its first passes already see every ModelDeployment and child, and it relists nothing.
Only the holder of the Lease reconciles and writes. The others watch the Lease (one watch
request, no polling) and note the local time of its last change; when the holder has not
renewed it for `lease_duration_s`, a standby takes it over with a write that carries the
Lease's resourceVersion, so of two standbys only one wins.

The holder renews every `renew_interval_s` and stops acting (`held()` turns false, which
fences the API client) `2/3 * lease_duration_s` after its last successful renewal began: a
holder cut off from the API server stops a third of the duration before anyone may take
over. On a clean stop (SIGTERM, a rolling update) it hands the Lease back, so a standby
takes over at once instead of after the duration.

Why a Lease and not kopf's peering: peering needs kopf's own CRDs installed cluster-wide,
a paused kopf stops its watches (a takeover relists everything), and a dead peer's record
is honoured for its whole `lifetime` (60 s). A Lease is the object the control plane's own
controllers elect with, needs a namespaced Role, and bounds the takeover by a duration we
choose. The bound after a kill is `lease_duration_s` from the dead replica's last renewal,
plus one write; the chart's default is 15 s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from modelcycle.operator.clients import KubeClient

logger = logging.getLogger(__name__)

LEADER = Gauge("modelcycle_operator_leader", "1 while this replica holds the Lease and acts, 0 while it stands by.")


def _stamp(now: dt.datetime) -> str:
    """A Lease's MicroTime."""
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    """The Lease `namespace/name`, held or awaited by the replica `identity`."""

    def __init__(
        self,
        *,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        duration_s: float,
        renew_s: float,
        on_gain: Callable[[], None],
    ) -> None:
        self.client = client
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration_s, self.renew_s = duration_s, renew_s
        self._on_gain = on_gain
        self._valid_until = 0.0
        """Monotonic time until which this replica may act."""
        self._lease: dict[str, Any] | None = None
        self._seen_at = 0.0
        """Monotonic time the Lease was last seen changing (the base of a standby's expiry)."""
        self._changed = asyncio.Event()

    def held(self) -> bool:
        return asyncio.get_running_loop().time() < self._valid_until

    async def run(self) -> None:
        """Watch the Lease, take it when it is free or expired, renew it while held."""
        watcher = asyncio.create_task(self._watch(), name=f"watch lease {self.namespace}/{self.name}")
        try:
            await self._changed.wait()  # the first listing
            while True:
                loop = asyncio.get_running_loop()
                if self._holder() == self.identity and self.held():
                    await asyncio.sleep(self.renew_s)
                    # Still ours (the watch may have brought another holder meanwhile, and a
                    # renewal of their version would take it from them)?
                    if self._holder() == self.identity and self.held() and not await self._write(renewal=True):
                        await asyncio.sleep(min(1.0, self.renew_s))
                    continue
                if self._valid_until:
                    self._step_down("the Lease was not renewed in time")
                wait = self._expires_at() - loop.time()
                self._changed.clear()
                if wait <= 0:
                    if not await self._write(renewal=False):
                        # Another replica was first: its write comes back through the watch.
                        wait = self.renew_s
                    else:
                        continue
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=wait)
                except TimeoutError:
                    pass
        finally:
            watcher.cancel()
            LEADER.set(0)

    async def release(self) -> None:
        """Hand the Lease back if held, so that a standby takes over at once."""
        if self._lease is None or not self.held() or self._holder() != self.identity:
            return
        self._valid_until = 0.0
        lease = {**self._lease, "spec": {**self._lease["spec"], "holderIdentity": None,
                                          "renewTime": _stamp(dt.datetime.now(dt.UTC)), "leaseDurationSeconds": 1}}
        try:
            await self.client.replace_lease(self.namespace, lease)
            logger.info("released the Lease %s/%s", self.namespace, self.name)
        except Exception as error:  # best effort: the Lease expires anyway
            logger.warning("cannot release the Lease %s/%s: %s", self.namespace, self.name, error)

    # -- internals ----------------------------------------------------------------------

    def _holder(self) -> str | None:
        return ((self._lease or {}).get("spec") or {}).get("holderIdentity") or None

    def _expires_at(self) -> float:
        """Monotonic time from which a standby may take the Lease."""
        if self._lease is None or self._holder() is None:
            return 0.0
        duration = float(self._lease["spec"].get("leaseDurationSeconds") or self.duration_s)
        return self._seen_at + duration

    async def _watch(self) -> None:
        while True:
            try:
                async for lease in self.client.watch_lease(self.namespace, self.name):
                    self._seen(lease)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("watch of the Lease %s/%s failed, again in 1 s: %s", self.namespace, self.name, error)
                await asyncio.sleep(1)

    def _seen(self, lease: dict[str, Any] | None) -> None:
        old_version = (self._lease or {}).get("metadata", {}).get("resourceVersion")
        if lease is not None and self._lease is not None and _older(lease, self._lease):
            return
        self._lease = lease
        if lease is None or lease["metadata"].get("resourceVersion") != old_version:
            self._seen_at = asyncio.get_running_loop().time()
        if self._valid_until and self._holder() != self.identity:
            self._step_down(f"{self._holder() or 'nobody'} holds the Lease now")
        self._changed.set()

    async def _write(self, *, renewal: bool) -> bool:
        """Renew the Lease, or take it over; whether this replica holds it now."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        now = _stamp(dt.datetime.now(dt.UTC))
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.duration_s)),
                "renewTime": now}
        try:
            if self._lease is None:
                result = await self.client.create_lease(self.namespace, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": now, "leaseTransitions": 0},
                })
            else:
                old = self._lease["spec"]
                if not renewal:
                    spec.update(acquireTime=now, leaseTransitions=int(old.get("leaseTransitions") or 0) + 1)
                result = await self.client.replace_lease(self.namespace, {**self._lease, "spec": {**old, **spec}})
        except Exception as error:
            logger.warning("cannot write the Lease %s/%s: %s", self.namespace, self.name, error)
            return False
        if result is None:  # someone else wrote it first: the watch brings their version
            return False
        self._seen(result)
        gained = not self.held()
        self._valid_until = began + self.duration_s * 2 / 3
        if gained:
            LEADER.set(1)
            logger.info("holding the Lease %s/%s as %s: acting", self.namespace, self.name, self.identity)
            self._on_gain()
        return True

    def _step_down(self, why: str) -> None:
        self._valid_until = 0.0
        LEADER.set(0)
        logger.warning("standing by (Lease %s/%s): %s", self.namespace, self.name, why)


def _older(lease: dict[str, Any], known: dict[str, Any]) -> bool:
    new, old = lease["metadata"].get("resourceVersion", ""), known["metadata"].get("resourceVersion", "")
    return new.isdigit() and old.isdigit() and int(new) < int(old)
