"""The bento: one registered model version behind BentoML's HTTP server.

`modelcycle package` writes a short entry module into each bento that subclasses
`ModelService` with the model's BentoML tag, its sha256, its status and the registry's
signature of them (see `packaging`). At start the service reads the artifact from the
bento's model store, refuses it unless the signature verifies with a key trusted here
(``MODELCYCLE_TRUSTED_KEYS``, or the signing key: `modelcycle.signing`, never a key inside
the bento) and its bytes match that sha256, and only then unpickles it; a worker that
refuses never becomes ready. The model server (`modelcycle.serving.model_server`) is the
same service with the model read from the registry instead (`ModelService.load_model`).

Routes (BentoML adds ``/livez``, ``/healthz``, ``/readyz`` and ``/metrics``):

- ``POST /predict``: ``{"records": [...]}`` or one record; answers at once with
  ``{"model", "model_version", "request_id", "predictions", "probabilities", "warnings"}``,
  the last three with one item per record.
- ``POST /predict_batch``: ``{"records": [...]}``; requests that arrive together are merged
  by BentoML's adaptive batching into one model call. Answers one ``{"prediction",
  "probabilities", "warnings"}`` per record (BentoML hands each request its own slice of the
  batch's output, a list); the request id and model version are in the headers.

A record's ``warnings`` list what was unusual about it but not wrong, each ``{"field",
"reason"}``: a null in a nullable field, a category training never saw, a number outside the
range training saw (`modelcycle.serving.requests.WARNING_REASONS`). The serving contract as
a whole, with examples, is `modelcycle.serving.contract`.

Both handlers are coroutines: the model call holds the event loop for its few milliseconds,
and requests that arrive meanwhile wait in the socket, which is what lets the batcher merge
them. A thread per call would only add a hand-off and contend for the GIL.

Every request goes through `RequestEdge` first, an ASGI middleware: it takes the request id
from ``X-Request-ID`` (or makes a uuid4 hex), echoes it on every response with ``X-Model``
and ``X-Model-Version``, and checks the body of a predict call against the model's data
schema (`RecordChecker`). A bad body is answered there with ``{"error", "field",
"request_id"}`` and a 4xx, before batching, so one bad request never fails the requests
batched with it. The handlers receive checked records. The middleware also counts the
warnings of the records it let through.

Metrics: BentoML's own ``bentoml_service_request_total`` (by endpoint and status) and
``bentoml_service_request_duration_seconds`` (histogram), the adaptive batch size,
``modelcycle_model_info`` with the model, version and sha256, and
``modelcycle_request_warnings_total`` by field and reason (every label set the schema allows
is there from the start, at zero).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import bentoml
from pydantic import BaseModel
from starlette.responses import Response

from modelcycle import artifacts, signing
from modelcycle.serving.fastpath import FastPath
from modelcycle.serving.requests import InvalidRequest, RecordChecker, RecordWarning, parse_records

logger = logging.getLogger(__name__)

ARTIFACT = "model.joblib"
"""The artifact's file name inside the BentoML model."""
PREDICT_ROUTES = ("/predict", "/predict_batch")
MAX_BODY_BYTES = 64 * 2**20
"""The largest predict body read, the gateway's limit too; a bigger one gets a 413."""
REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")

SERVICE_CONFIG: dict[str, Any] = {
    "workers": 1,
    "traffic": {"timeout": 30},
    "metrics": {"enabled": True, "namespace": "bentoml_service"},
}
"""`@bentoml.service` options of every bento. One worker per server: the model is CPU-bound
Python, so scale with replicas (or raise ``workers`` on a big machine). A request that takes
more than 30 s gets a 504 rather than holding its connection."""
BATCHING: dict[str, Any] = {"max_batch_size": 256, "max_latency_ms": 1000}
"""Adaptive batching bounds: rows per model call, and how long a request may wait in the
queue before BentoML sheds it with a 503. The batcher waits only as long as its running
estimate says a bigger batch pays off (a few milliseconds here); the bound is for overload."""


@dataclass(frozen=True)
class LoadedModel:
    """A verified, unpickled model and who it is."""

    name: str
    version: str
    sha256: str
    model: Any
    """The `TrainedModel`."""
    what: str
    """Where it came from, in words, for logs and errors."""


class Answer(BaseModel):
    """What ``POST /predict`` answers (written by hand in the handler, this is its schema)."""

    model: str
    model_version: str
    request_id: str
    predictions: list[Any]
    probabilities: list[dict[str, float]] | None
    """Per record, class -> probability; null for regression."""
    warnings: list[list[RecordWarning]]
    """Per record, what was unusual about it (field and reason); empty when nothing was."""


class ModelService:
    """The HTTP face of a `TrainedModel`. Subclassed per bento with `model_ref`, `model_sha256`,
    `model_status` and `model_signature`; or with `load_model` replaced, by the model server."""

    model_ref: ClassVar[bentoml.models.BentoModel]
    """The model in the BentoML store; on an instance it reads as the stored `bentoml.Model`."""
    model_sha256: ClassVar[str]
    model_status: ClassVar[str] = ""
    """The version's status in the registry, part of what the signature covers."""
    model_signature: ClassVar[dict[str, str] | None] = None
    """The registry's `signing.Signature` of the version, as a dict; None in a bento packaged
    before signing existed, which is refused like any unsigned version (package it again)."""

    def __init__(self) -> None:
        loaded = self.load_model()
        self.name, self.version, self.model_sha256, self.model = (
            loaded.name, loaded.version, loaded.sha256, loaded.model)
        if self.model.schema is None:
            raise RuntimeError(f"{loaded.what} has no data schema: it cannot validate requests")
        self.checker = RecordChecker(self.model.schema)
        self.fast_path = FastPath.start(self.model, what=loaded.what)
        self.classes = [str(c) for c in self.model.classes] if self.model.classes is not None else None
        self.raw_headers = [(b"x-model", self.name.encode()), (b"x-model-version", self.version.encode())]

        from prometheus_client import Counter, Gauge  # only now: BentoML sets up multiprocess metrics before this

        Gauge("modelcycle_model_info", "The model version this server answers with.",
              ["model", "version", "sha256"], multiprocess_mode="max",
              ).labels(self.name, self.version, self.model_sha256).set(1)
        counter = Counter("modelcycle_request_warnings", "Warnings about the fields of records let through to "
                          "the model (null, unseen category, outside the observed range), by field and reason.",
                          ["field", "reason"])
        self.warning_counts = {(w["field"], w["reason"]): counter.labels(w["field"], w["reason"])
                               for w in self.checker.possible_warnings}
        self.fast_path.publish()
        logger.info("serving model %s version %s (sha256 %s)", self.name, self.version, self.model_sha256)

    def load_model(self) -> LoadedModel:
        """The bento's model, from its model store, verified before it is unpickled."""
        stored = self.model_ref  # the descriptor resolves to the stored bentoml.Model
        name = stored.info.labels.get("modelcycle.model", stored.tag.name)
        version = stored.info.labels.get("modelcycle.version", stored.tag.version or "")
        what = f"bento model {stored.tag} (model {name} version {version})"
        message = signing.statement(name=name, version=int(version), sha256=self.model_sha256, status=self.model_status)
        signing.Keyring.from_environment().verify(message, self.model_signature, what=what)
        model = load_verified(Path(stored.path) / ARTIFACT, sha256=self.model_sha256, what=what)
        return LoadedModel(name=name, version=version, sha256=self.model_sha256, model=model, what=what)

    @bentoml.api(route="/predict", output_spec=Answer)
    async def predict(self, ctx: bentoml.Context) -> Response:
        """Predict records now, in one model call: ``{"records": [...]}`` or one record."""
        state = ctx.request.state
        predictions, probabilities = self._predict(state.records)
        return self._answer(state.request_id, predictions, probabilities, state.warnings)

    @bentoml.api(route="/predict_batch", batchable=True, **BATCHING)
    async def predict_batch(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Predict records, batched with other requests' records by adaptive batching."""
        predictions, probabilities = self._predict(records)
        return [{"prediction": p, "probabilities": q, "warnings": w} for p, q, w in
                zip(predictions, probabilities or [None] * len(predictions), self.checker.warnings(records))]

    def _predict(self, records: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, float]] | None]:
        return self.fast_path.predict(records, self.checker.frame)

    def _answer(self, request_id: str, predictions: list[Any], probabilities: list[dict[str, float]] | None,
                warnings: list[list[RecordWarning]]) -> Response:
        body = {"model": self.name, "model_version": self.version, "request_id": request_id,
                "predictions": predictions, "probabilities": probabilities, "warnings": warnings}
        return Response(json.dumps(body), media_type="application/json")

    def count_warnings(self, warnings: list[list[RecordWarning]]) -> None:
        """Count the warnings of records let through to the model."""
        for found in warnings:
            for warning in found:
                self.warning_counts[warning["field"], warning["reason"]].inc()


def load_verified(path: Path, *, sha256: str, what: str) -> Any:
    """The artifact at `path`, unpickled only if its bytes match `sha256`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise artifacts.ArtifactIntegrityError(f"{what}: the artifact {path} is missing") from None
    return artifacts.loads(data, sha256=sha256, what=what)


class RequestEdge:
    """ASGI middleware: request ids on every response, and the predict body checked up front.

    It runs inside BentoML's metrics and tracing middleware, so the 4xx answers it gives
    are counted like any other.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        service = bentoml.get_current_service()
        headers = [(REQUEST_ID_HEADER, request_id.encode()), *service.raw_headers]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        if scope["method"] == "POST" and scope["path"] in PREDICT_ROUTES:
            try:
                body = await _read_body(receive)
                records = parse_records(body, bare=scope["path"] == "/predict")
                warnings = service.checker.check(records)
            except InvalidRequest as exc:
                await _reply(send_with_headers, exc.status, exc.body(request_id))
                return
            service.count_warnings(warnings)
            scope["state"]["records"] = records
            scope["state"]["warnings"] = warnings
            receive = _replay(body)
        await self.app(scope, receive, send_with_headers)


def _request_id(scope: dict) -> str:
    for key, value in scope["headers"]:
        if key == REQUEST_ID_HEADER:
            if _REQUEST_ID.fullmatch(value):
                return value.decode()
            break
    request_id = uuid.uuid4().hex
    scope["headers"] = [(k, v) for k, v in scope["headers"] if k != REQUEST_ID_HEADER]
    scope["headers"].append((REQUEST_ID_HEADER, request_id.encode()))
    return request_id


async def _read_body(receive: Any) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY_BYTES:
            raise InvalidRequest(f"the body is larger than {MAX_BODY_BYTES // 2**20} MiB", status=413)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _reply(send: Any, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
    ]})
    await send({"type": "http.response.body", "body": data})
