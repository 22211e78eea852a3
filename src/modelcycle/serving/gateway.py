"""The gateway sits in front of production and shows a shadow model the same live traffic.

Every ``POST /predict`` is forwarded to production, whose status and body go back to the
client byte for byte, with the request id in ``X-Request-ID`` (the client's, or a fresh
uuid4 hex). The gateway also mints an id of its own for every request, a uuid4 hex that it
returns in ``X-Gateway-Request-ID``: that id, never the client's, keys the prediction log
and chooses the mirror sample, so a client that reuses or picks its ids can neither
overwrite logged requests nor choose which of them the shadow sees (the client's id is
logged as ``client_request_id``, for correlation). A deterministic sample of the gateway's
ids, `mirror_percent` of them, is also sent to the shadow. Mirroring happens off the request path: the request joins a
bounded queue that a few workers drain, each shadow call has its own timeout, and a full
queue drops the mirror (counted) rather than wait. So a slow, failing or dead shadow never
changes or delays what the client gets. Upstream calls go through `Upstream`, a lean
keep-alive HTTP/1.1 client (see `modelcycle.serving.upstream` for why not aiohttp's), one
pool for production and a separate one for the shadow.

Both answers go to the prediction log (`modelcycle.monitoring.predictions`): the request
with production's answer as soon as the client has it (the log's bookkeeping runs after the
answer is written, off the client's wait), the shadow's answer as a
second entry when it arrives. ``POST /feedback`` adds the true label of a request, named
by the gateway's id (a client's id labels the latest request that carried it); with a
feedback token configured it takes ``Authorization: Bearer <token>`` and answers 401
without it, since labels feed the live metrics and the promotion verdict. The log keeps
`log.retain_bytes` and `log.retain_age_s` of segments, and on a full disk it sheds shadow
entries and bounds its memory (see `modelcycle.monitoring.predictions`); ``/metrics``
counts what it deleted and dropped. A full disk never touches a production answer.
``GET /shadow/comparison`` and the ``modelcycle_shadow_*`` gauges of ``GET /metrics`` report
`compare_shadow` over the log under the promotion policy, recomputed at most every
`comparison_ttl_s` seconds, in a worker process of its own (`compare_followed_log`): it
parses only what was appended since its last look, keeps a few numbers per request rather
than the entries, and its pandas and statistics never hold this process's GIL while requests
wait. Given production's reference profile (``--reference-profile``), ``GET /metrics`` also
exports the monitoring figures of `monitor_followed_log` over the profile's window, computed
in the same worker: per-column drift scores and flags (``modelcycle_drift_*``), data set and
prediction drift, missing rates, and the live goal metrics on the labelled rows with their
intervals (``modelcycle_live_*``). The request path only adds production's score to the
``modelcycle_prediction_score`` histogram; no metric is labelled by request. ``GET /docs``
(and ``/docs.json``) is the serving contract (`modelcycle.serving.contract`): every route
with an example request and answer, and what a record's warnings mean. Production's answers,
warnings included, reach the client unchanged.

The policy's thresholds are read again from `policy_file` when it changes, so a
Kubernetes ConfigMap mounted as a directory can change them without a restart, which would
empty the log on an emptyDir; so is the feedback token from `feedback_token_file` (a
mounted Secret, rotated in place). A 500 answer never carries an exception's text: it is logged.

On SIGTERM the gateway stops accepting connections, lets in-flight requests finish, gives
queued and in-flight mirrors up to `drain_timeout_s` to complete, logs the ones left over
as not answered, then flushes and fsyncs the log: a clean shutdown loses no entry.

Run it with ``python -m modelcycle.serving.gateway --production-url URL [--shadow-url URL]
[--mirror-percent N] --log-dir DIR [--port P] [--feedback-token-file FILE] [--policy-file FILE]``;
the feedback token may also come from ``MODELCYCLE_FEEDBACK_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from modelcycle.monitoring.predictions import (
    PredictionLogSettings,
    PredictionLogWriter,
    UpstreamAnswer,
)
from modelcycle.monitoring.shadow import ShadowComparison, ShadowPolicy, compare_followed_log
from modelcycle.serving.contract import contract_document, render_html
from modelcycle.serving.upstream import Upstream, UpstreamError

if TYPE_CHECKING:
    from modelcycle.monitoring.monitors import MonitoringResult

__all__ = ["GATEWAY", "Gateway", "GatewayConfig", "create_app", "in_mirror_sample", "main"]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
GATEWAY_REQUEST_ID_HEADER = "X-Gateway-Request-ID"
"""The id the gateway minted for a request: the prediction log's key and /feedback's address."""
FEEDBACK_TOKEN_ENV = "MODELCYCLE_FEEDBACK_TOKEN"
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")
"""What the bentos accept as a request id too (they replace any other with a fresh one)."""


class GatewayConfig(BaseModel):
    """Where the gateway forwards and mirrors to, and how it protects production from the shadow."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    production_url: str
    """Base URL of the production model server; the gateway calls its /predict and /readyz."""
    shadow_url: str | None = None
    """Base URL of the shadow model server; None serves production only."""
    mirror_percent: Annotated[float, Field(ge=0, le=100)] = 100.0
    """Share of request ids, in percent, mirrored to the shadow. Chosen by hashing the id, so a
    given id is always in or always out of the sample."""
    log_dir: Path
    """Directory of the prediction log."""
    production_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """Seconds production may take before the client gets a 504."""
    shadow_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    """Seconds a shadow call may take before it is logged as a timeout. It bounds how long a
    mirror worker is held, not the client's wait."""
    queue_size: Annotated[int, Field(gt=0)] = 1000
    """Mirrors waiting for a worker; beyond it mirrors are dropped and counted."""
    mirror_workers: Annotated[int, Field(gt=0)] = 8
    """Concurrent shadow calls. Also the most connections the shadow can take from the pool."""
    max_connections: Annotated[int, Field(gt=0)] = 100
    """Keep-alive connections to production, in a pool of their own: the shadow's pool holds
    `mirror_workers`, so the shadow can never take production's connections."""
    max_body_bytes: Annotated[int, Field(gt=0)] = 64 * 2**20
    """Largest request body accepted, in bytes (aiohttp's default of 1 MiB is small for batches)."""
    drain_timeout_s: Annotated[float, Field(ge=0)] = 10.0
    """Seconds a shutdown waits for queued and in-flight mirrors before logging them as not
    answered. Keep it below the pod's termination grace period."""
    comparison_ttl_s: Annotated[float, Field(ge=0)] = 5.0
    """Seconds a computed shadow comparison is reused; computing it costs time linear in
    the requests logged (in a worker process, off the request path)."""
    log: PredictionLogSettings = PredictionLogSettings()
    """Segment rotation and flushing of the prediction log."""
    policy: ShadowPolicy = ShadowPolicy()
    """What the shadow must show to be promoted, unless `policy_file` says otherwise."""
    policy_file: Path | None = None
    """A JSON object of `ShadowPolicy` fields, read again whenever it changes: thresholds that
    change without a restart. While it is missing or invalid the last good policy holds
    (`policy` at first), and the problem is logged."""
    feedback_token: SecretStr | None = None
    """The bearer token /feedback requires; None leaves /feedback open to anyone who can
    reach the gateway (said at startup)."""
    feedback_token_file: Path | None = None
    """A file holding the token, read again whenever it changes, so that a mounted Secret
    can be rotated without a restart; it takes the place of `feedback_token`. While it is
    missing or empty the last token read holds (`feedback_token` at first): /feedback never
    opens because a file went away."""
    reference_profile: Path | None = None
    """The reference profile of production's version (``profile.json`` in the registry); with
    it ``/metrics`` exports drift, data quality and live performance over the profile's
    monitoring window, and a histogram of production's scores."""
    monitoring_ttl_s: Annotated[float, Field(ge=0)] = 30.0
    """Seconds a computed monitoring result is reused; like the comparison, it is computed in
    the worker process, in time linear in the window's requests."""

    @field_validator("production_url", "shadow_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// base URL, found {value!r}")
        return value.rstrip("/")


def in_mirror_sample(request_id: str, *, percent: float) -> bool:
    """Whether `request_id` is mirrored at `percent`: a hash of the id, not a coin toss, so
    that any process can tell from the log which ids were in the sample. The gateway passes
    its own ids, which no client chooses."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < percent / 100 * 2**64


class GatewayMetrics:
    """The gateway's Prometheus metrics, in a registry of their own."""

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelcycle_gateway_requests", "Upstream calls by upstream and HTTP status "
            "(timeout or unreachable when there was no answer).",
            ["upstream", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "modelcycle_gateway_upstream_latency_seconds", "Time for an upstream to answer.",
            ["upstream"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
        )
        self.mirrored = Counter(
            "modelcycle_gateway_mirrored", "Requests queued for the shadow.", registry=self.registry
        )
        self.dropped = Counter(
            "modelcycle_gateway_mirror_dropped", "Mirrors never sent to the shadow, by reason.",
            ["reason"], registry=self.registry,
        )
        self.shadow_errors = Counter(
            "modelcycle_gateway_shadow_errors", "Shadow calls without a 2xx answer, by kind.",
            ["kind"], registry=self.registry,
        )
        queue_depth = Gauge(
            "modelcycle_gateway_mirror_queue_depth", "Mirrors waiting for a worker.", registry=self.registry
        )
        queue_depth.set_function(queue.qsize)
        self.agreement = Gauge(
            "modelcycle_shadow_agreement", "Share of compared rows where shadow and production agree.",
            registry=self.registry,
        )
        self.latency_ratio = Gauge(
            "modelcycle_shadow_latency_ratio", "Shadow p50 latency over production p50 latency.",
            registry=self.registry,
        )
        self.error_rate = Gauge(
            "modelcycle_shadow_error_rate", "Error rate of each side, as in the shadow comparison.",
            ["side"], registry=self.registry,
        )
        self.compared = Gauge(
            "modelcycle_shadow_compared_requests", "Requests both sides answered.", registry=self.registry
        )
        self.verdict = Gauge(
            "modelcycle_shadow_verdict", "1 for the current verdict of the shadow comparison, 0 for the others.",
            ["verdict"], registry=self.registry,
        )
        self.production_latency = self.latency.labels("production")
        self.shadow_latency = self.latency.labels("shadow")
        self.drift_score = Gauge(
            "modelcycle_drift_score", "Drift test score of an input column over the monitoring window: a p-value "
            "for ks, chisquare and z, a distance for wasserstein, jensenshannon and psi.",
            ["column", "stattest"], registry=self.registry,
        )
        self.drift_detected = Gauge(
            "modelcycle_drift_detected", "1 when an input column drifted over the monitoring window, else 0.",
            ["column"], registry=self.registry,
        )
        self.drift_share = Gauge(
            "modelcycle_drift_share", "Share of input columns that drifted.", registry=self.registry
        )
        self.dataset_drift = Gauge(
            "modelcycle_dataset_drift", "1 when the share of drifted input columns reaches the spec's drift_share.",
            registry=self.registry,
        )
        self.prediction_drift_score = Gauge(
            "modelcycle_prediction_drift_score", "Drift test score of production's scores against the test split's.",
            ["stattest"], registry=self.registry,
        )
        self.prediction_drift = Gauge(
            "modelcycle_prediction_drift_detected", "1 when production's scores drifted, else 0.",
            registry=self.registry,
        )
        self.live_metric = Gauge(
            "modelcycle_live_metric", "A goal metric on the labelled rows of the window; absent without labels.",
            ["metric"], registry=self.registry,
        )
        self.live_metric_bound = Gauge(
            "modelcycle_live_metric_bound", "Bootstrap interval bounds of modelcycle_live_metric.",
            ["metric", "bound"], registry=self.registry,
        )
        self.labelled_rows = Gauge(
            "modelcycle_live_labelled_rows", "Labelled prediction rows in the monitoring window.",
            registry=self.registry,
        )
        self.window_rows = Gauge(
            "modelcycle_monitoring_window_rows", "Prediction rows in the monitoring window.", registry=self.registry
        )
        self.missing_rate = Gauge(
            "modelcycle_live_missing_rate", "Share of missing values of an input column over the window.",
            ["column"], registry=self.registry,
        )
        self.score: Histogram | None = None

    def track_scores(self, buckets: Sequence[float]) -> None:
        """Add the histogram of production's scores, with `buckets` as upper bounds."""
        self.score = Histogram(
            "modelcycle_prediction_score", "Production's score per prediction row: the positive class's "
            "probability, or the predicted value of a regression.", registry=self.registry, buckets=buckets,
        )

    def show_monitoring(self, result: MonitoringResult) -> None:
        """Set the monitoring gauges from a result; a metric without labelled rows is absent."""
        self.drift_score.clear()
        for column in result.drift.columns:
            self.drift_score.labels(column.column, column.stattest).set(column.score)
            self.drift_detected.labels(column.column).set(1 if column.drifted else 0)
        self.drift_share.set(result.drift.drift_share)
        self.dataset_drift.set(1 if result.drift.dataset_drift else 0)
        self.prediction_drift_score.clear()
        prediction = result.drift.prediction
        if prediction is not None:
            self.prediction_drift_score.labels(prediction.stattest).set(prediction.score)
        self.prediction_drift.set(1 if prediction is not None and prediction.drifted else 0)
        performance = result.performance
        self.labelled_rows.set(performance.labelled_rows if performance else 0)
        self.live_metric.clear()
        self.live_metric_bound.clear()
        for metric in performance.metrics if performance else []:
            self.live_metric.labels(metric.metric).set(metric.value)
            self.live_metric_bound.labels(metric.metric, "low").set(metric.low)
            self.live_metric_bound.labels(metric.metric, "high").set(metric.high)
        self.window_rows.set(result.rows)
        for column in result.quality.columns:
            self.missing_rate.labels(column.column).set(column.missing_rate)

    def show(self, comparison: ShadowComparison) -> None:
        """Set the shadow gauges from a comparison; a figure with no data yet reads NaN."""
        nan = float("nan")
        self.agreement.set(comparison.agreement.value if comparison.agreement else nan)
        self.latency_ratio.set(comparison.latency_ratio_p50.value if comparison.latency_ratio_p50 else nan)
        rates = {"production": comparison.production_error_rate, "shadow": comparison.shadow_error_rate}
        for side, rate in rates.items():
            self.error_rate.labels(side).set(rate.value if rate else nan)
        self.compared.set(comparison.compared_requests)
        for verdict in ("promote", "hold", "reject"):
            self.verdict.labels(verdict).set(1 if verdict == comparison.verdict else 0)


class PredictionLogCollector(Collector):
    """What the prediction log's writer deleted and dropped, read from its stats at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[CounterMetricFamily]:
        log = getattr(self.gateway, "log", None)
        if log is None:
            return
        stats = log.stats
        yield CounterMetricFamily("modelcycle_prediction_log_deleted_segments",
                                  "Prediction log segments deleted by retention (age or size).",
                                  value=stats.segments_deleted)
        yield CounterMetricFamily("modelcycle_prediction_log_deleted_bytes",
                                  "Bytes of the prediction log segments deleted by retention.",
                                  value=stats.bytes_deleted)
        dropped = CounterMetricFamily(
            "modelcycle_prediction_log_dropped_entries", "Prediction log entries never written, by entry type "
            "and reason: disk_full (shadow entries shed while writes fail), buffer_full (memory bound reached).",
            labels=["type", "reason"],
        )
        for (kind, reason), count in sorted(stats.entries_dropped.items()):
            dropped.add_metric([kind, reason], count)
        yield dropped


class Gateway:
    """State of one running gateway: the upstream session, the mirror queue and workers, the
    prediction log and the metrics. `create_app` wires it into an aiohttp application."""

    log: PredictionLogWriter
    """The prediction log, open while the application runs."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.queue: asyncio.Queue[tuple[str, str, bytes, str]] = asyncio.Queue(config.queue_size)
        """Mirrors waiting: (gateway's id, id forwarded upstream, body, content type)."""
        self.metrics = GatewayMetrics(self.queue)
        self.metrics.registry.register(PredictionLogCollector(self))
        self._policy = config.policy
        self._policy_version: tuple[int, int, int] | None = None
        """(inode, mtime, size) of the policy file last read."""
        self._token = config.feedback_token
        self._token_version: tuple[int, int, int] | None = None
        """The same, of the feedback token file."""
        self._workers: list[asyncio.Task[None]] = []
        self._accepting = False
        self._production = Upstream(config.production_url, max_connections=config.max_connections)
        self._shadow = (Upstream(config.shadow_url, max_connections=config.mirror_workers)
                        if config.shadow_url else None)
        self._production_counts: dict[int, Counter] = {}
        self._comparison: tuple[float, ShadowComparison] | None = None
        self._comparison_lock = asyncio.Lock()
        self._comparer: ProcessPoolExecutor | None = None
        self._monitoring: tuple[float, MonitoringResult] | None = None
        self._monitoring_lock = asyncio.Lock()
        self._positive_class: str | None = None
        """The class whose probability is production's score, for a binary classifier."""
        if config.reference_profile is not None:
            self._track_scores(config.reference_profile)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: open the log and start the mirror workers; on shutdown
        drain the mirrors up to the deadline, close the upstream connections, then flush and
        close the log."""
        self.log = PredictionLogWriter(self.config.log_dir, settings=self.config.log)
        if self._shadow:
            self._workers = [
                asyncio.create_task(self._mirror_worker(), name=f"mirror-worker-{n}")
                for n in range(self.config.mirror_workers)
            ]
        self._accepting = True
        try:
            yield
        finally:
            self._accepting = False
            await self._drain_mirrors()
            await self._production.close()
            if self._shadow:
                await self._shadow.close()
            if self._comparer:
                self._comparer.shutdown(wait=False, cancel_futures=True)
            await asyncio.get_running_loop().run_in_executor(None, self.log.close)

    async def on_shutdown(self, app: web.Application) -> None:
        self._accepting = False

    async def predict(self, request: web.Request) -> web.StreamResponse:
        client_id = request.headers.get(REQUEST_ID_HEADER) or None
        if client_id is not None and not _REQUEST_ID.fullmatch(client_id):
            return _error(400, f"expected 1 to {MAX_REQUEST_ID_LENGTH} visible ASCII characters, found "
                          f"{client_id[:40]!r}{'...' if len(client_id) > 40 else ''} ({len(client_id)} characters)",
                          field=REQUEST_ID_HEADER, request_id=None)
        gateway_id = uuid.uuid4().hex
        # The models see, and the client gets back, the client's own id: it correlates.
        request_id = client_id or gateway_id
        body = await request.read()
        content_type = request.headers.get("Content-Type", "application/json")
        mirrored, shadow_reason = self._mirror(gateway_id, request_id, body, content_type)

        headers = {"Content-Type": content_type, REQUEST_ID_HEADER: request_id}
        started = time.perf_counter()
        try:
            answer = await self._production.request(
                "POST", "/predict", body=body, headers=headers, timeout=self.config.production_timeout_s
            )
        except (TimeoutError, UpstreamError) as exc:
            latency = time.perf_counter() - started
            timed_out = isinstance(exc, TimeoutError)
            if timed_out:
                message = f"production did not answer within {self.config.production_timeout_s} s"
            else:
                message = f"production is unreachable: {exc}"
            self.metrics.requests.labels("production", "timeout" if timed_out else "unreachable").inc()
            self.metrics.production_latency.observe(latency)
            self.log.write_request(
                request_id=gateway_id, client_request_id=client_id, records=_records(body),
                production=_failed_answer(latency, message), mirrored=mirrored, shadow_reason=shadow_reason,
            )
            return _error(504 if timed_out else 502, message, field=None, request_id=request_id,
                          gateway_request_id=gateway_id)
        latency = time.perf_counter() - started
        response = web.Response(body=answer.body, status=answer.status, headers={
            "Content-Type": answer.content_type or "application/json", REQUEST_ID_HEADER: request_id,
            GATEWAY_REQUEST_ID_HEADER: gateway_id,
        })
        try:
            # The client gets its answer first; the bookkeeping below (two JSON parses and an
            # encode for the log) then overlaps with the client's next request.
            await response.prepare(request)
            await response.write_eof()
        finally:
            self._count_production(answer.status)
            self.metrics.production_latency.observe(latency)
            production = _answer(answer.body, answer.status, latency)
            self.log.write_request(
                request_id=gateway_id, client_request_id=client_id, records=_records(body),
                production=production, mirrored=mirrored, shadow_reason=shadow_reason,
            )
            if self.metrics.score is not None:
                self._observe_scores(production)
        return response

    async def feedback(self, request: web.Request) -> web.StreamResponse:
        token = self.feedback_token()
        if token is not None and not _bearer_matches(request.headers.get("Authorization"), token):
            return web.json_response(
                {"error": "expected Authorization: Bearer <the gateway's feedback token>", "field": "Authorization",
                 "request_id": None},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="modelcycle feedback"'},
            )
        try:
            request_id, label, row = _parse_feedback(await request.read())
        except InvalidFeedback as exc:
            return _error(400, str(exc), field=exc.field, request_id=exc.request_id)
        self.log.write_feedback(request_id=request_id, label=label, row=row)
        return web.json_response({"request_id": request_id, "status": "recorded"}, status=202)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Ready when accepting and production says it is ready; the shadow does not count."""
        if not self._accepting:
            return web.json_response({"status": "shutting down"}, status=503)
        try:
            answer = await self._production.request("GET", "/readyz", timeout=1.0)
            ready = 200 <= answer.status < 300
        except (TimeoutError, UpstreamError):
            ready = False
        body = {"status": "ready" if ready else "production not ready"}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_page(self, request: web.Request) -> web.StreamResponse:
        if self._shadow:
            try:
                await self.comparison()
            except Exception:
                logger.exception("cannot compute the shadow comparison for /metrics")
        if self.config.reference_profile is not None:
            try:
                await self.monitoring()
            except Exception:
                logger.exception("cannot compute the monitoring result for /metrics")
        page = generate_latest(self.metrics.registry)
        return web.Response(body=page, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def shadow_comparison(self, request: web.Request) -> web.StreamResponse:
        try:
            comparison = await self.comparison()
        except Exception:
            logger.exception("cannot compute the shadow comparison")
            return _error(500, "cannot compute the shadow comparison; the gateway's log says why",
                          field=None, request_id=None)
        return web.Response(body=comparison.model_dump_json(), content_type="application/json")

    async def monitoring_page(self, request: web.Request) -> web.StreamResponse:
        """``GET /monitoring``: the monitoring result over the profile's window, as JSON (what
        `modelcycle loop` and the operator's monitoring check read); 404 without a profile."""
        if self.config.reference_profile is None:
            return _error(404, "this gateway has no reference profile (--reference-profile), so it computes no "
                          "drift", field=None, request_id=None)
        try:
            result = await self.monitoring()
        except Exception:
            logger.exception("cannot compute the monitoring result")
            return _error(500, "cannot compute the monitoring result; the gateway's log says why",
                          field=None, request_id=None)
        return web.Response(body=result.model_dump_json(), content_type="application/json")

    async def comparison(self) -> ShadowComparison:
        """The shadow comparison over the log, recomputed in the worker process when older
        than the TTL (the log is flushed first, so it covers every answer logged so far)."""
        async with self._comparison_lock:
            now = time.monotonic()
            policy = self.policy()
            if (self._comparison and now - self._comparison[0] < self.config.comparison_ttl_s
                    and self._comparison[1].policy == policy):
                return self._comparison[1]
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._flush_log)
            if self._comparer is None:
                # spawn, not fork: this process has threads (the log's flusher, executors).
                self._comparer = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            try:
                comparison = await loop.run_in_executor(
                    self._comparer, partial(compare_followed_log, self.config.log_dir, policy=policy)
                )
            except BrokenProcessPool:
                self._comparer = None  # the worker died (out of memory, say); the next call starts another
                raise
            self._comparison = (now, comparison)
            self.metrics.show(comparison)
            return comparison

    async def monitoring(self) -> MonitoringResult:
        """Drift, data quality and live performance over the log's recent window, recomputed in
        the worker process when older than `monitoring_ttl_s`."""
        from modelcycle.monitoring.monitors import monitor_followed_log

        assert self.config.reference_profile is not None
        async with self._monitoring_lock:
            now = time.monotonic()
            if self._monitoring and now - self._monitoring[0] < self.config.monitoring_ttl_s:
                return self._monitoring[1]
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._flush_log)
            if self._comparer is None:
                self._comparer = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            try:
                result = await loop.run_in_executor(
                    self._comparer,
                    partial(monitor_followed_log, self.config.log_dir, self.config.reference_profile),
                )
            except BrokenProcessPool:
                self._comparer = None
                raise
            self._monitoring = (now, result)
            self.metrics.show_monitoring(result)
            return result

    def policy(self) -> ShadowPolicy:
        """The promotion policy: `policy_file`'s when set, read again when the file changed."""
        path = self.config.policy_file
        if path is None:
            return self._policy
        try:
            stat = path.stat()  # through the kubelet's symlinks: a new file on every update
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if version != self._policy_version:
                self._policy = ShadowPolicy.model_validate_json(path.read_bytes())
                self._policy_version = version
                logger.info("promotion policy from %s: %s", path, self._policy.model_dump_json())
        except (OSError, ValidationError) as exc:
            logger.error("cannot read the promotion policy in %s, keeping the last one: %s", path, exc)
        return self._policy

    def feedback_token(self) -> SecretStr | None:
        """The token /feedback requires: `feedback_token_file`'s when set, read again when the
        file changed; an unreadable or empty file keeps the last one."""
        path = self.config.feedback_token_file
        if path is None:
            return self._token
        try:
            stat = path.stat()
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if version != self._token_version:
                self._token_version = version
                token = path.read_text().strip()
                if not token:
                    raise ValueError("the file is empty")
                if self._token is not None and token != self._token.get_secret_value():
                    logger.info("feedback token from %s replaced", path)
                self._token = SecretStr(token)
        except (OSError, ValueError) as exc:
            logger.error("cannot read the feedback token in %s, keeping the last one: %s", path, exc)
        return self._token

    def _flush_log(self) -> None:
        """Flush before a comparison; a full disk is the log's to count, not a reason to fail."""
        try:
            self.log.flush()
        except OSError as exc:
            logger.warning("cannot flush the prediction log in %s: %s", self.config.log_dir, exc)

    def _track_scores(self, path: Path) -> None:
        """Read the profile's score distribution for the histogram's buckets: twentieths of
        a probability, or the reference's deciles of a regression's predictions. A multiclass
        model's score is its predicted class, which a histogram cannot hold."""
        document = json.loads(Path(path).read_bytes())
        kind = document.get("score_kind")
        if kind == "positive_class_probability":
            self._positive_class = document["classes"][1]
            self.metrics.track_scores([round(0.05 * n, 2) for n in range(1, 21)])
        elif kind == "prediction":
            edges, cdf = document["scores"].get("edges") or [0.0], document["scores"].get("cdf") or [1.0]
            deciles = {edges[min(bisect.bisect_left(cdf, q / 10), len(edges) - 1)] for q in range(1, 10)}
            self.metrics.track_scores(sorted(deciles))

    def _observe_scores(self, production: UpstreamAnswer) -> None:
        histogram = self.metrics.score
        assert histogram is not None
        if self._positive_class is not None:
            for probabilities in production.get("probabilities") or []:
                if isinstance(probabilities, dict) and isinstance(probabilities.get(self._positive_class), int | float):
                    histogram.observe(probabilities[self._positive_class])
        else:
            for prediction in production.get("predictions") or []:
                if isinstance(prediction, int | float) and not isinstance(prediction, bool):
                    histogram.observe(prediction)

    def _mirror(self, gateway_id: str, request_id: str, body: bytes, content_type: str) -> tuple[bool, str]:
        """Queue a mirror when the gateway's id is in the sample; (mirrored, shadow_reason for the log)."""
        if self._shadow is None:
            return False, "no shadow configured"
        if not in_mirror_sample(gateway_id, percent=self.config.mirror_percent):
            return False, "not sampled"
        try:
            self.queue.put_nowait((gateway_id, request_id, body, content_type))
        except asyncio.QueueFull:
            self.metrics.dropped.labels("queue_full").inc()
            return True, "dropped: mirror queue full"
        self.metrics.mirrored.inc()
        return True, "pending"

    async def _mirror_worker(self) -> None:
        while True:
            gateway_id, request_id, body, content_type = await self.queue.get()
            try:
                answer = await self._call_shadow(request_id, body, content_type)
            except asyncio.CancelledError:
                self.log.write_shadow(
                    request_id=gateway_id, shadow=None, shadow_reason="not answered before shutdown"
                )
                self.metrics.dropped.labels("shutdown").inc()
                self.queue.task_done()
                raise
            except Exception:
                logger.exception("mirror of request %s failed", gateway_id)
                self.log.write_shadow(
                    request_id=gateway_id, shadow=None, shadow_reason="gateway error while mirroring"
                )
            else:
                self.log.write_shadow(request_id=gateway_id, shadow=answer)
            self.queue.task_done()

    async def _call_shadow(self, request_id: str, body: bytes, content_type: str) -> UpstreamAnswer:
        assert self._shadow is not None
        headers = {"Content-Type": content_type, REQUEST_ID_HEADER: request_id}
        started = time.perf_counter()
        try:
            answer = await self._shadow.request(
                "POST", "/predict", body=body, headers=headers, timeout=self.config.shadow_timeout_s
            )
        except TimeoutError:
            latency = time.perf_counter() - started
            self.metrics.requests.labels("shadow", "timeout").inc()
            self.metrics.shadow_errors.labels("timeout").inc()
            self.metrics.shadow_latency.observe(latency)
            return _failed_answer(latency, f"shadow did not answer within {self.config.shadow_timeout_s} s")
        except UpstreamError as exc:
            latency = time.perf_counter() - started
            self.metrics.requests.labels("shadow", "unreachable").inc()
            self.metrics.shadow_errors.labels("unreachable").inc()
            return _failed_answer(latency, f"shadow is unreachable: {exc}")
        latency = time.perf_counter() - started
        self.metrics.requests.labels("shadow", str(answer.status)).inc()
        self.metrics.shadow_latency.observe(latency)
        if not 200 <= answer.status < 300:
            self.metrics.shadow_errors.labels("status").inc()
        return _answer(answer.body, answer.status, latency)

    async def _drain_mirrors(self) -> None:
        if not self._workers:
            return
        try:
            await asyncio.wait_for(self.queue.join(), timeout=self.config.drain_timeout_s)
        except TimeoutError:
            logger.warning(
                "%d mirrors still queued after %.1f s of shutdown; logging them as not answered",
                self.queue.qsize(), self.config.drain_timeout_s,
            )
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self.queue.empty():
            gateway_id, _, _, _ = self.queue.get_nowait()
            self.log.write_shadow(
                request_id=gateway_id, shadow=None, shadow_reason="not sent before shutdown"
            )
            self.metrics.dropped.labels("shutdown").inc()
            self.queue.task_done()

    def _count_production(self, status: int) -> None:
        counter = self._production_counts.get(status)
        if counter is None:
            counter = self._production_counts[status] = self.metrics.requests.labels("production", str(status))
        counter.inc()


GATEWAY = web.AppKey("gateway", Gateway)
"""The `Gateway` behind an application made by `create_app`."""
DOCS_HTML = render_html()
DOCS_JSON = json.dumps(contract_document(), indent=2)
"""The serving contract, as ``GET /docs`` and ``GET /docs.json`` serve it."""


def create_app(config: GatewayConfig) -> web.Application:
    """An aiohttp application serving the gateway described by `config`."""
    gateway = Gateway(config)
    app = web.Application(client_max_size=config.max_body_bytes)
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(gateway.lifecycle)
    app.on_shutdown.append(gateway.on_shutdown)
    app.router.add_post("/predict", gateway.predict)
    app.router.add_post("/feedback", gateway.feedback)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_get("/metrics", gateway.metrics_page)
    app.router.add_get("/shadow/comparison", gateway.shadow_comparison)
    app.router.add_get("/monitoring", gateway.monitoring_page)
    app.router.add_get("/docs", docs_page)
    app.router.add_get("/docs.json", docs_document)
    return app


async def docs_page(request: web.Request) -> web.StreamResponse:
    return web.Response(text=DOCS_HTML, content_type="text/html")


async def docs_document(request: web.Request) -> web.StreamResponse:
    return web.Response(text=DOCS_JSON, content_type="application/json")


class InvalidFeedback(ValueError):
    """A /feedback body the gateway cannot record; answered with 400 naming the field."""

    def __init__(self, message: str, *, field: str | None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.request_id = request_id


def _bearer_matches(authorization: str | None, token: SecretStr) -> bool:
    """Whether an Authorization header carries `token` as a bearer token (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())


def _parse_feedback(body: bytes) -> tuple[str, Any, int | None]:
    """(request_id, label, row) of a /feedback body ``{"request_id", "label", "row"?}``."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InvalidFeedback(f"expected a JSON object, found invalid JSON ({exc})", field=None) from None
    if not isinstance(document, dict):
        raise InvalidFeedback(f"expected a JSON object, found {type(document).__name__}", field=None)
    request_id = document.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidFeedback(f"expected a non-empty string, found {request_id!r}", field="request_id")
    label = document.get("label")
    if label is None:
        raise InvalidFeedback("expected the true label, found none", field="label", request_id=request_id)
    row = document.get("row")
    if row is not None and (not isinstance(row, int) or isinstance(row, bool) or row < 0):
        raise InvalidFeedback(
            f"expected a row number >= 0 or null, found {row!r}", field="row", request_id=request_id
        )
    return request_id, label, row


def _records(body: bytes) -> list[dict[str, Any]] | None:
    """The input records of a /predict body, for the log; None when it is not valid input
    (production's answer then says what is wrong)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if isinstance(document, dict):
        records = document["records"] if "records" in document else [document]
        return records if isinstance(records, list) else None
    return None


def _answer(payload: bytes, status: int, latency_s: float) -> UpstreamAnswer:
    """The log's view of a model server's answer; the payload follows the serving contract."""
    try:
        document = json.loads(payload)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        error = ("the answer is not a JSON object" if 200 <= status < 300
                 else payload[:200].decode(errors="replace"))
        return {"model": None, "version": None, "predictions": None, "probabilities": None,
                "latency_ms": latency_s * 1000, "status": status, "error": error}
    error = document.get("error")
    return {
        "model": document.get("model"),
        "version": _string(document.get("model_version")),
        "predictions": document.get("predictions"),
        "probabilities": document.get("probabilities"),
        "latency_ms": latency_s * 1000,
        "status": status,
        "error": str(error) if error is not None else None,
    }


def _failed_answer(latency_s: float, message: str) -> UpstreamAnswer:
    return {"model": None, "version": None, "predictions": None, "probabilities": None,
            "latency_ms": latency_s * 1000, "status": None, "error": message}


def _string(value: Any) -> str | None:
    return None if value is None else str(value)


def _error(status: int, message: str, *, field: str | None, request_id: str | None,
           gateway_request_id: str | None = None) -> web.Response:
    headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
    if gateway_request_id:
        headers[GATEWAY_REQUEST_ID_HEADER] = gateway_request_id
    return web.json_response(
        {"error": message, "field": field, "request_id": request_id}, status=status, headers=headers
    )


def _profile_from_registry(parser: argparse.ArgumentParser, registry: str, model: str) -> Path | None:
    """Production's reference profile, read from the registry into a temporary file;
    None (and a warning) for a version registered before profiles existed."""
    from modelcycle.artifacts import write_atomic
    from modelcycle.registry import Registry, RegistryError, parse_model_ref

    try:
        name, ref = parse_model_ref(model)
        profile = Registry(registry).profile(name, ref)
    except (RegistryError, KeyError, ValueError) as exc:
        parser.error(f"--model {model} in --registry {registry}: {exc.args[0] if exc.args else exc}")
    if profile is None:
        logger.warning("%s has no reference profile in %s: no drift or live metrics", model, registry)
        return None
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="modelcycle-gateway-")) / "reference-profile.json"
    write_atomic(path, json.dumps(profile).encode())
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m modelcycle.serving.gateway",
        description="Forward /predict to production, mirror a sample to a shadow, log both answers.",
    )
    defaults = {name: field.default for name, field in GatewayConfig.model_fields.items()}
    log, policy = PredictionLogSettings(), ShadowPolicy()
    parser.add_argument("--production-url", required=True, help="base URL of the production model server")
    parser.add_argument("--shadow-url", help="base URL of the shadow model server")
    parser.add_argument("--mirror-percent", type=float, default=defaults["mirror_percent"],
                        help="share of request ids mirrored to the shadow, 0-100")
    parser.add_argument("--log-dir", type=Path, required=True, help="directory of the prediction log")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--production-timeout", type=float, default=defaults["production_timeout_s"], help="s")
    parser.add_argument("--shadow-timeout", type=float, default=defaults["shadow_timeout_s"], help="s")
    parser.add_argument("--queue-size", type=int, default=defaults["queue_size"])
    parser.add_argument("--mirror-workers", type=int, default=defaults["mirror_workers"])
    parser.add_argument("--drain-timeout", type=float, default=defaults["drain_timeout_s"], help="s")
    parser.add_argument("--segment-max-bytes", type=int, default=log.max_segment_bytes)
    parser.add_argument("--segment-max-age", type=float, default=log.max_segment_age_s, help="s")
    parser.add_argument("--flush-interval", type=float, default=log.flush_interval_s, help="s")
    parser.add_argument("--retain-bytes", type=int, default=log.retain_bytes,
                        help="bytes of log segments kept; the oldest beyond are deleted")
    parser.add_argument("--retain-age", type=float, default=log.retain_age_s,
                        help="s after its last write that a log segment is deleted")
    parser.add_argument("--max-buffered-bytes", type=int, default=log.max_buffered_bytes,
                        help="most bytes of log entries held in memory while the disk refuses them")
    parser.add_argument("--policy-file", type=Path,
                        help="JSON object of promotion thresholds, read again when it changes")
    parser.add_argument("--feedback-token-file", type=Path,
                        help=f"file holding the bearer token /feedback requires, read again when it changes "
                             f"(else ${FEEDBACK_TOKEN_ENV})")
    for name, field in ShadowPolicy.model_fields.items():  # the policy's thresholds, as it defines them
        parser.add_argument(f"--{name.replace('_', '-')}", type=field.annotation, default=getattr(policy, name),
                            help=f"{(field.description or '').replace('%', '%%')} (unless --policy-file "
                                 "says otherwise)")
    parser.add_argument("--reference-profile", type=Path,
                        help="production's reference profile (profile.json): export drift and live metrics")
    parser.add_argument("--registry", help="with --model: read production's reference profile from this registry "
                        "(a folder or fsspec URL) at start, instead of --reference-profile")
    parser.add_argument("--model", help="with --registry: production's version, NAME@VERSION")
    parser.add_argument("--monitoring-ttl", type=float, default=defaults["monitoring_ttl_s"], help="s")
    args = parser.parse_args(argv)
    if (args.registry is None) != (args.model is None):
        parser.error("--registry and --model go together: the registry to read production's profile from, and "
                     "its version")
    if args.registry is not None:
        args.reference_profile = _profile_from_registry(parser, args.registry, args.model)
    if args.feedback_token_file is not None:
        try:
            token: str | None = args.feedback_token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"--feedback-token-file: cannot read {args.feedback_token_file}: {exc.strerror}")
        if not token:
            parser.error(f"--feedback-token-file: expected a token, found an empty file {args.feedback_token_file}")
    else:
        token = os.environ.get(FEEDBACK_TOKEN_ENV, "").strip() or None
    try:
        config = GatewayConfig(
            production_url=args.production_url,
            shadow_url=args.shadow_url,
            mirror_percent=args.mirror_percent,
            log_dir=args.log_dir,
            production_timeout_s=args.production_timeout,
            shadow_timeout_s=args.shadow_timeout,
            queue_size=args.queue_size,
            mirror_workers=args.mirror_workers,
            drain_timeout_s=args.drain_timeout,
            log=PredictionLogSettings(
                max_segment_bytes=args.segment_max_bytes,
                max_segment_age_s=args.segment_max_age,
                flush_interval_s=args.flush_interval,
                retain_bytes=args.retain_bytes,
                retain_age_s=args.retain_age,
                max_buffered_bytes=args.max_buffered_bytes,
            ),
            policy=ShadowPolicy(**{name: getattr(args, name) for name in ShadowPolicy.model_fields}),
            policy_file=args.policy_file,
            feedback_token=token,
            feedback_token_file=args.feedback_token_file,
            reference_profile=args.reference_profile,
            monitoring_ttl_s=args.monitoring_ttl,
        )
    except ValidationError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info(
        "gateway on http://%s:%d: production %s, shadow %s at %g%%, log in %s",
        args.host, args.port, config.production_url, config.shadow_url or "none", config.mirror_percent,
        config.log_dir,
    )
    if config.feedback_token is None:
        logger.warning("/feedback is open: no feedback token (--feedback-token-file or $%s), so anyone who "
                       "can reach the gateway can label requests, and labels feed the live metrics",
                       FEEDBACK_TOKEN_ENV)
    # A request in flight ends within the production timeout, so waiting that long cuts none.
    web.run_app(
        create_app(config), host=args.host, port=args.port, access_log=None, print=None,
        shutdown_timeout=config.production_timeout_s,
    )


if __name__ == "__main__":
    main()
