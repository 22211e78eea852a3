"""`python -m modelcycle.operator`: run the operator until SIGTERM or SIGINT.

It serves the namespaces of `MODELCYCLE_NAMESPACES` (comma-separated), or the whole
cluster when that is empty, and runs standalone: one replica, no kopf peering objects
(the chart's Deployment has one replica and a Recreate strategy, so two operators never
run at once). `MODELCYCLE_METRICS_PORT` serves Prometheus metrics on that port, and
`MODELCYCLE_LIVENESS_PORT` kopf's liveness probe at `/healthz`.
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
