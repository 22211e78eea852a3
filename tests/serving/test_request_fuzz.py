"""Request handling on bodies, headers and field values nobody writes by hand (Hypothesis),
over real HTTP: the bento and the gateway in front of it answer 2xx or 4xx, never a 5xx,
and never hang (a 20 s client timeout fails the test)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelcycle.serving.local import ServerProcess, free_port, start_process, stop_process, wait_ready
from property_cases import CASES

FIELDS = ["ts", "amount", "merchant_category", "channel", "country", "customer_age", "account_age_days",
          "tx_last_24h", "distance_from_home_km", "transaction_id"]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip)  # h11 refuses edge spaces
HEADERS = st.dictionaries(st.sampled_from(["X-Request-ID", "Content-Type", "Accept", "X-Forwarded-For", "X-Anything"]),
                          header_text, max_size=3)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])


@pytest.fixture(scope="module")
def gateway(bento_server: ServerProcess, tmp_path_factory) -> Iterator[ServerProcess]:
    """The real gateway process in front of the session's bento, no shadow."""
    folder = tmp_path_factory.mktemp("fuzz-gateway")
    port = free_port()
    server = start_process("gateway", [sys.executable, "-m", "modelcycle.serving.gateway", "--production-url",
                                       bento_server.url, "--log-dir", str(folder / "log"), "--port", str(port)],
                           url=f"http://127.0.0.1:{port}", log=folder / "gateway.log")
    try:
        wait_ready(server)
        yield server
    finally:
        stop_process(server)


def _records(served) -> st.SearchStrategy:
    """A good record with some fields replaced by anything, or dropped, or added."""
    good = served.records[0]
    return st.builds(
        lambda changes, dropped, extra: {**{k: v for k, v in good.items() if k not in dropped}, **changes, **extra},
        st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
        st.sets(st.sampled_from(FIELDS), max_size=2),
        st.dictionaries(st.text(max_size=8), json_scalars, max_size=2),
    )


def _check(client: httpx.Client, path: str, *, content: bytes, headers: dict[str, str], name: str) -> None:
    CASES[name] += 1
    answer = client.post(path, content=content, headers=headers)
    assert answer.status_code < 500, f"{path} answered {answer.status_code}: {answer.text[:300]}\nbody: {content[:300]!r}"
    if answer.status_code in (400, 413, 415, 422):  # refused input says why, as JSON naming the problem
        assert "error" in answer.json(), answer.text[:300]
    else:
        assert answer.status_code in (200, 404, 405), f"{path}: {answer.status_code} {answer.text[:200]}"


@pytest.mark.parametrize("target", ["bento", "gateway"])
def test_records_with_any_field_values(served, bento_server, gateway, target):
    url = (bento_server if target == "bento" else gateway).url

    @SETTINGS
    @given(records=st.lists(_records(served), min_size=1, max_size=4), headers=HEADERS, wrap=st.booleans())
    def check(records, headers, wrap):
        body = {"records": records} if wrap or len(records) > 1 else records[0]
        headers = {**headers, "Content-Type": "application/json"}
        with httpx.Client(base_url=url, timeout=20) as client:
            _check(client, "/predict", content=json.dumps(body).encode(), headers=headers,
                   name=f"{target} /predict: records with any field values")

    check()


@pytest.mark.parametrize("target", ["bento", "gateway"])
def test_any_body_and_headers(bento_server, gateway, target):
    url = (bento_server if target == "bento" else gateway).url

    @SETTINGS
    @given(body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())),
           headers=HEADERS, path=st.sampled_from(["/predict", "/predict_batch", "/feedback"]))
    def check(body, headers, path):
        if target == "bento" and path == "/feedback":
            path = "/predict"
        with httpx.Client(base_url=url, timeout=20) as client:
            _check(client, path, content=body, headers=headers, name=f"{target}: any body and headers")

    check()
