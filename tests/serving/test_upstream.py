"""The gateway's HTTP client (`modelcycle.serving.upstream`) against real servers on 127.0.0.1.

Most servers here are real aiohttp servers. Three faults that a real server does not produce
on demand come from `FakeServer`, a fake: a raw asyncio server scripted to close a kept-alive
connection as the next request arrives, to answer with a body that ends at the close, or to
answer with bytes that are not HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from modelcycle.cluster.pki import ClusterPKI
from modelcycle.serving.upstream import Upstream, UpstreamError


@contextlib.asynccontextmanager
async def serving(app: web.Application, **kwargs) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, **kwargs)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def echo_app(peers: list[tuple[tuple[str, int], str | None]] | None = None) -> web.Application:
    """Echoes the body; records each request's client address and request id."""

    async def predict(request: web.Request) -> web.Response:
        if peers is not None:
            peers.append((request.transport.get_extra_info("peername"),  # type: ignore[union-attr]
                          request.headers.get("X-Request-ID")))
        return web.Response(body=await request.read(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/predict", predict)
    return app


async def test_answers_come_back_whole_and_connections_are_kept_alive() -> None:
    peers: list[tuple[tuple[str, int], str | None]] = []
    async with serving(echo_app(peers)) as url:
        upstream = Upstream(url, max_connections=4)
        for n in range(5):
            answer = await upstream.request("POST", "/predict", body=b'{"n": %d}' % n,
                                            headers={"Content-Type": "application/json", "X-Request-ID": f"r{n}"},
                                            timeout=5)
            assert (answer.status, answer.body, answer.content_type) == (200, b'{"n": %d}' % n,
                                                                          "application/json")
        await upstream.close()
    assert [request_id for _, request_id in peers] == [f"r{n}" for n in range(5)]
    assert len({peer for peer, _ in peers}) == 1, "five sequential calls did not share one connection"


async def test_a_chunked_answer_is_reassembled() -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"predictions": [', b"0, 1", b"]}"):
            await response.write(part)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/predict", chunked)
    async with serving(app) as url:
        upstream = Upstream(url, max_connections=1)
        answer = await upstream.request("POST", "/predict", timeout=5)
        assert answer.body == b'{"predictions": [0, 1]}'
        again = await upstream.request("POST", "/predict", timeout=5)
        assert again.body == answer.body
        await upstream.close()


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    peers: list[tuple[tuple[str, int], str | None]] = []
    async with serving(echo_app(peers), keepalive_timeout=0.2) as url:
        upstream = Upstream(url, max_connections=1)
        assert (await upstream.request("POST", "/predict", body=b"1", timeout=5)).body == b"1"
        await asyncio.sleep(0.6)  # the server closes the idle connection
        assert (await upstream.request("POST", "/predict", body=b"2", timeout=5)).body == b"2"
        await upstream.close()
    assert len({peer for peer, _ in peers}) == 2


async def test_refused_connections_and_timeouts_raise_and_do_not_poison_the_pool() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = Upstream(f"http://127.0.0.1:{port}", max_connections=1)
    with pytest.raises(UpstreamError, match=f"cannot connect to 127.0.0.1:{port}"):
        await refused.request("POST", "/predict", timeout=5)

    delays = [0.5, 0.0]

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(delays.pop(0))
        return web.Response(text="late or not")

    app = web.Application()
    app.router.add_post("/predict", slow)
    async with serving(app) as url:
        upstream = Upstream(url, max_connections=1)
        with pytest.raises(TimeoutError):
            await upstream.request("POST", "/predict", timeout=0.1)
        # The timed-out connection was closed; the next call gets a fresh one and its own answer.
        answer = await upstream.request("POST", "/predict", timeout=5)
        assert answer.body == b"late or not"
        await upstream.close()


async def test_at_most_max_connections_calls_are_in_flight() -> None:
    in_flight = 0
    most = 0

    async def predict(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/predict", predict)
    async with serving(app) as url:
        upstream = Upstream(url, max_connections=2)
        answers = await asyncio.gather(*(upstream.request("POST", "/predict", timeout=5) for _ in range(8)))
        await upstream.close()
    assert [a.body for a in answers] == [b"ok"] * 8
    assert most == 2


async def test_https_answers_and_an_untrusted_server_is_refused(tmp_path) -> None:
    pki = ClusterPKI.create(tmp_path / "pki")  # a CA and a certificate for 127.0.0.1
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.serving_cert, pki.serving_key)
    runner = web.AppRunner(echo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        trusting = Upstream(url, max_connections=1, ssl_context=ssl.create_default_context(cafile=pki.ca_cert))
        assert (await trusting.request("POST", "/predict", body=b"over tls", timeout=5)).body == b"over tls"
        await trusting.close()
        with pytest.raises(UpstreamError, match="certificate verify failed"):
            await Upstream(url, max_connections=1).request("POST", "/predict", timeout=5)
    finally:
        await runner.cleanup()


async def test_header_values_cannot_inject_lines() -> None:
    upstream = Upstream("http://127.0.0.1:9", max_connections=1)
    with pytest.raises(ValueError, match=r"header X-Request-ID: expected no line breaks"):
        await upstream.request("POST", "/predict", headers={"X-Request-ID": "a\r\nX-Evil: 1"}, timeout=1)


def test_only_http_base_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="expected an http:// or https:// base URL, found 'ftp://x'"):
        Upstream("ftp://x", max_connections=1)


# -- faults from a fake server -------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_server(script: Script) -> AsyncIterator[str]:
    """A fake: a raw server that runs `script(reader, writer, connection_number)` per connection."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await script(reader, writer, connections)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return await reader.readexactly(length)


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_a_kept_alive_connection_closed_as_a_request_arrives_is_retried_once() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        if number == 1:
            writer.write(answer(await read_request(reader)))
            await read_request(reader)  # the second request on this connection: close, no answer
            return
        while True:
            writer.write(answer(await read_request(reader)))

    async with fake_server(script) as url:
        upstream = Upstream(url, max_connections=1)
        assert (await upstream.request("POST", "/predict", body=b"first", timeout=5)).body == b"first"
        assert (await upstream.request("POST", "/predict", body=b"second", timeout=5)).body == b"second"
        await upstream.close()


async def test_a_fresh_connection_closed_without_an_answer_is_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)

    async with fake_server(script) as url:
        with pytest.raises(UpstreamError, match="closed before an answer"):
            await Upstream(url, max_connections=1).request("POST", "/predict", body=b"x", timeout=5)


async def test_an_answer_that_ends_at_the_close_and_a_malformed_one() -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nall of it")

    async with fake_server(close_delimited) as url:
        upstream = Upstream(url, max_connections=1)
        assert (await upstream.request("POST", "/predict", body=b"x", timeout=5)).body == b"all of it"
        assert (await upstream.request("POST", "/predict", body=b"x", timeout=5)).body == b"all of it"

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await reader.read()

    async with fake_server(garbage) as url:
        with pytest.raises(UpstreamError, match="malformed HTTP answer"):
            await Upstream(url, max_connections=1).request("POST", "/predict", body=b"x", timeout=5)
