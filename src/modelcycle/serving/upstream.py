"""The gateway's HTTP/1.1 client for its model servers: keep-alive connections, nothing more.

Why not aiohttp's client, which the gateway used first: a ``ClientSession.post`` builds
request and response objects, header multidicts, URLs, timers and tracing hooks for every
call. Measured on the project's 2-core machine, a bare aiohttp proxy in front of a trivial
upstream spent 0.36 ms of CPU per request with aiohttp's client and 0.25 ms with this one,
and in front of a 12 ms model it added 0.76 ms to the p50 against 0.41 ms with this one; the
gateway's whole budget is 1 ms. The gateway needs very little: one request at a time per
connection to the base URL it was configured with, a body of known length, and the status,
content type and body of the answer. So this module keeps a pool of asyncio connections
per upstream, writes the request head itself, and leaves the parsing of answers (status
line, headers, Content-Length, chunked or close-delimited bodies, keep-alive) to
`httptools`, the llhttp binding uvicorn uses.

Semantics:

- `Upstream.request` holds at most `max_connections` connections; a call waits for a free
  one, and that wait counts against the call's timeout, like the answer itself.
- An answer that the server marks keep-alive returns its connection to the pool; any other
  outcome (error, timeout, cancellation, ``Connection: close``) closes it, since its state
  is unknown.
- A server may close an idle keep-alive connection just as a request is sent on it (uvicorn
  does after 5 idle seconds). A call on a reused connection that fails before a single byte
  of answer arrived is retried once on a fresh connection. The gateway only sends predict
  calls, which change nothing upstream, so a retry is safe.
- Failures without an HTTP answer raise `UpstreamError` (refused, reset, malformed answer)
  or `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

__all__ = ["Upstream", "UpstreamError", "UpstreamResponse"]


class UpstreamError(Exception):
    """No usable HTTP answer: the connection was refused or lost, or the answer was malformed."""


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    content_type: str | None
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._body: list[bytes] = []
        self._content_type: str | None = None
        self._received = False
        self._headers_done = False
        self._framed = False
        """Whether the answer has a Content-Length or chunked body (else it ends at close)."""
        self._keep_alive = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for: the server is confused; never reuse this connection.
            self.close()
            return
        self._received = True
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed HTTP answer: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._framed:
            self._complete()  # an HTTP/1.0-style answer that ends when the connection does
        elif self._received:
            self._fail(UpstreamError("the connection closed in the middle of the answer"))
        else:
            self._fail(_Unanswered(f"the connection closed before an answer{f': {exc}' if exc else ''}"))

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self._content_type = value.decode("latin-1")
        elif name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()  # type: ignore[union-attr]
        self._complete()

    # -- used by Upstream --------------------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> asyncio.Future[UpstreamResponse]:
        self._waiter = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._body = []
        self._content_type = None
        self._received = self._headers_done = self._framed = self._keep_alive = False
        self.transport.writelines((head, body))  # type: ignore[union-attr]
        return self._waiter

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            status = self._parser.get_status_code()  # type: ignore[union-attr]
            self._waiter.set_result(UpstreamResponse(status, self._content_type, b"".join(self._body)))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)


class _Unanswered(UpstreamError):
    """The connection closed before any byte of the answer: safe to retry on a fresh one."""


class Upstream:
    """Keep-alive connections to one model server at `base_url` (http or https).

    https verifies the server against `ssl_context`, by default the system's trusted CAs
    (``SSL_CERT_FILE`` points it at another bundle)."""

    def __init__(self, base_url: str, *, max_connections: int, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// base URL, found {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        if not host_header.isascii():
            raise ValueError(f"expected an ASCII host (punycode for others), found {host_header!r}")
        self._host_line = f"Host: {host_header}\r\n".encode("ascii")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> UpstreamResponse:
        """Send one request and read its whole answer within `timeout` seconds."""
        head = self._head(method, path, body, headers)
        async with asyncio.timeout(timeout):
            async with self._slots:
                connection, reused = await self._connection()
                try:
                    try:
                        response = await connection.send(head, body)
                    except _Unanswered:
                        if not reused:
                            raise
                        connection.close()
                        connection = await self._connect()
                        response = await connection.send(head, body)
                except BaseException:
                    connection.close()
                    raise
                if connection.reusable and not self._closed:
                    self._idle.append(connection)
                else:
                    connection.close()
                return response

    async def close(self) -> None:
        """Close every idle connection; calls in flight close theirs when they end."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _head(self, method: str, path: str, body: bytes, headers: dict[str, str] | None) -> bytes:
        lines = [f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("ascii"), self._host_line,
                 b"Content-Length: %d\r\n" % len(body)]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name}: expected no line breaks, found {value!r}")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _connection(self) -> tuple[_Connection, bool]:
        """The most recently used idle connection (its buffers are warm), else a new one."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection, True
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection, self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        return connection
