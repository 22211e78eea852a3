"""The serving contract: what each HTTP route of a model server and of the gateway takes and answers.

A client sends records, one object per row with a field per feature column of the model's
data schema (`modelcycle.serving.requests` checks them), and gets back one prediction per
record, the class probabilities of a classifier, and the record's warnings. A record that
breaks a rule of the schema is refused with a 4xx naming the field; a record that is only
unusual is answered, and its warnings say what was unusual, each a `RecordWarning` with one
of the `WARNING_REASONS`.

`ROUTES` writes the contract down once, with an example request and answer per route (the
fraud example's model); the gateway serves it as ``GET /docs`` (a page to read, `render_html`)
and ``GET /docs.json``. A model server's own ``/docs`` is BentoML's generated OpenAPI page.
This module imports nothing heavy, so the gateway can serve it without the model's stack.
"""

from __future__ import annotations

import html
import json
from typing import Any, Literal

from typing_extensions import TypedDict  # pydantic validates with it; typing's own is too old on 3.11

WarningReason = Literal["null", "unseen_category", "outside_observed_range"]
WARNING_REASONS: dict[WarningReason, str] = {
    "null": "the field is null (or NaN), which it may be; the feature pipeline imputes it",
    "unseen_category": "a category training never saw, in a field without a closed category list; "
                       "it is encoded as unknown",
    "outside_observed_range": "a number outside the range training saw, but within the declared min and max; "
                              "the model extrapolates",
}
"""Why an answer warns about a field of a record, and what it means for the prediction."""


class RecordWarning(TypedDict):
    """Something unusual about one field of a record that was answered all the same."""

    field: str
    reason: WarningReason


INTRO = ("A record is an object with a field per feature column of the model's data schema. A record that "
         "breaks a rule of the schema is refused with a 4xx naming the field; a record that is only unusual is "
         "answered, and its warnings say which field was unusual and why.")


class Route(TypedDict):
    """One route of the contract, as `/docs` shows it."""

    method: Literal["GET", "POST"]
    path: str
    served_by: str
    summary: str
    request: Any
    answer: Any


EXAMPLE_RECORD: dict[str, Any] = {
    "ts": "2026-01-20T13:21:27", "amount": 40.19, "merchant_category": None, "channel": "online",
    "country": "ZZ", "customer_age": 64, "account_age_days": 1853, "tx_last_24h": 5,
    "distance_from_home_km": 12.7,
}
"""A record of the fraud example, with two things unusual about it: a null merchant category
and a country training never saw."""
EXAMPLE_WARNINGS: list[RecordWarning] = [
    RecordWarning(field="merchant_category", reason="null"),
    RecordWarning(field="country", reason="unseen_category"),
]
EXAMPLE_PROBABILITIES = {"0": 0.9691247996500569, "1": 0.030875200349943014}
"""What the demo's model answers for `EXAMPLE_RECORD`. It predicts 1 at a 3% probability of
fraud: the decision threshold minimises the spec's costs, where a missed fraud costs 25 reviews."""
ERROR = {"error": "records[1].channel: expected one of 'pos', 'online', 'atm', found \"fax\"",
         "field": "channel", "request_id": "3f1c9e0a"}

ROUTES: list[Route] = [
    Route(method="POST", path="/predict", served_by="gateway and model server",
          summary="Predict now. The body is {\"records\": [...]} or one bare record; an X-Request-ID header "
                  "(1 to 128 visible ASCII characters) is kept, else one is made, and echoed in the answer and "
                  "its headers. predictions, probabilities (null for a regression) and warnings have one item "
                  "per record. A bad body is answered with {\"error\", \"field\", \"request_id\"}: 400 (not JSON, "
                  "not records), 413 (over 10000 records or 64 MiB), 422 (a field breaks a rule of the schema); "
                  "the gateway adds 502 and 504 when production is unreachable or slow. The gateway also "
                  "answers an X-Gateway-Request-ID header: the id it made for this request, which keys the "
                  "prediction log and the shadow's sample (a client's id never does, so reusing one "
                  "overwrites nothing); send it back to /feedback.",
          request={"records": [EXAMPLE_RECORD]},
          answer={"model": "fraud", "model_version": "1", "request_id": "3f1c9e0a", "predictions": [1],
                  "probabilities": [EXAMPLE_PROBABILITIES], "warnings": [EXAMPLE_WARNINGS]}),
    Route(method="POST", path="/predict_batch", served_by="model server",
          summary="Predict with adaptive batching: requests that arrive together share one model call. The body "
                  "is {\"records\": [...]}; the answer has one object per record; the request id and the model "
                  "version are in the X-Request-ID and X-Model-Version headers. Errors as for /predict.",
          request={"records": [EXAMPLE_RECORD]},
          answer=[{"prediction": 1, "probabilities": EXAMPLE_PROBABILITIES, "warnings": EXAMPLE_WARNINGS}]),
    Route(method="POST", path="/feedback", served_by="gateway",
          summary="Record the true label of an answered request (and of one of its records with row, counted "
                  "from 0), for the live performance in the prediction log. request_id is the "
                  "X-Gateway-Request-ID of the answer; a client's own X-Request-ID is also taken, and labels "
                  "the latest request that carried it. When the gateway has a feedback token, send "
                  "Authorization: Bearer <token>; without it the answer is 401. 202 when recorded, 400 "
                  "naming the field otherwise.",
          request={"request_id": "8d0f6c2e4b1a4f3e9c7d5b2a1e0f3c4d", "label": 1, "row": 0},
          answer={"request_id": "8d0f6c2e4b1a4f3e9c7d5b2a1e0f3c4d", "status": "recorded"}),
    Route(method="GET", path="/shadow/comparison", served_by="gateway",
          summary="The shadow measured against production on the logged traffic: agreement, score deltas, "
                  "latency and error rates with confidence intervals, and the verdict (promote, hold, reject) "
                  "with its reasons.",
          request=None,
          answer={"verdict": "hold", "reasons": ["42 of the 500 compared requests the policy needs"],
                  "compared_requests": 42, "agreement": {"value": 0.976, "low": 0.877, "high": 0.996, "n": 42},
                  "...": "the other figures of modelcycle.monitoring.shadow.ShadowComparison"}),
    Route(method="GET", path="/metrics", served_by="gateway and model server",
          summary="Prometheus metrics. A model server counts requests by endpoint and status, their latency, "
                  "the adaptive batch sizes and modelcycle_request_warnings_total by field and reason; the "
                  "gateway counts upstream calls, mirrors and the shadow comparison's figures.",
          request=None,
          answer='modelcycle_request_warnings_total{field="country",reason="unseen_category"} 1.0'),
    Route(method="GET", path="/healthz", served_by="gateway and model server",
          summary="Alive. /readyz: ready to answer (the gateway: when production is ready).",
          request=None, answer={"status": "ok"}),
]


def contract_document() -> dict[str, Any]:
    """The contract as JSON: the routes, the warning reasons and the error body."""
    return {"about": INTRO, "routes": ROUTES, "warning_reasons": WARNING_REASONS, "error": ERROR}


def render_html() -> str:
    """The contract as one page to read."""
    def code(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, indent=2)
        return f"<pre>{html.escape(text)}</pre>"

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>modelcycle serving contract</title>"
             f"</head><body><h1>modelcycle serving contract</h1><p>{html.escape(INTRO)}</p>"]
    for route in ROUTES:
        parts.append(f"<h2>{route['method']} {route['path']}</h2><p><i>{html.escape(route['served_by'])}</i>. "
                     f"{html.escape(route['summary'])}</p>")
        if route["request"] is not None:
            parts.append("<p>Request:</p>" + code(route["request"]))
        parts.append("<p>Answer:</p>" + code(route["answer"]))
    parts.append("<h2>Warnings</h2><ul>" + "".join(
        f"<li><code>{reason}</code>: {html.escape(meaning)}</li>" for reason, meaning in WARNING_REASONS.items()
    ) + "</ul><h2>Errors</h2>" + code(ERROR) + "</body></html>")
    return "".join(parts)
