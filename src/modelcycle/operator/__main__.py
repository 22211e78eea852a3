"""`python -m modelcycle.operator`: run the operator until SIGTERM or SIGINT.

It serves the namespaces of `MODELCYCLE_NAMESPACES` (comma-separated), or the whole
cluster when that is empty, and only the ModelDeployments `MODELCYCLE_SELECTOR` selects,
if set. kopf runs standalone (no kopf peering objects): with `MODELCYCLE_LEASE_NAME` set,
replicas elect the active one with a Lease (`leadership`), and the chart runs two.
`MODELCYCLE_METRICS_PORT` serves Prometheus metrics on that port, and
`MODELCYCLE_LIVENESS_PORT` kopf's liveness probe at `/healthz` (a standby is live too).
"""

from __future__ import annotations

import logging
import os

import kopf
from prometheus_client import start_http_server

from modelcycle.operator.settings import OperatorSettings


def main() -> None:
    settings = OperatorSettings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every event handler call; the reconcile loops log what they change.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics_port = os.environ.get("MODELCYCLE_METRICS_PORT")
    if metrics_port:
        start_http_server(int(metrics_port))
    liveness_port = os.environ.get("MODELCYCLE_LIVENESS_PORT")
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
    )


if __name__ == "__main__":
    main()
