"""A fault-injecting HTTP proxy for tests: put it between boto3 and the S3 server over HTTP.

The proxy listens on a free loopback port and forwards every request, unchanged, to the
upstream server (the moto server of ``tests/conftest.py``). A test arms a fault with a
predicate over the request; the first request that matches it is forwarded and *applied* by
the server, but its reply is dropped: the proxy closes the connection without answering, as a
network that loses a reply would. boto3 then retries the request on its own, exactly as it
would against real S3; a conditional PUT retried that way meets its own write (412).

Usage::

    with S3FaultProxy(s3_server) as proxy:
        proxy.drop_reply_once(lambda r: r.method == "PUT" and "If-Match" in r.headers)
        store = S3Store(bucket, prefix, client_kwargs={"endpoint_url": proxy.url})
        ...
        assert proxy.dropped  # the fault really fired

boto3 itself is not mocked: it talks HTTP to the proxy, the proxy talks HTTP to the server.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlparse

# Hop-by-hop headers are not forwarded (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                         "transfer-encoding", "upgrade", "expect"})


@dataclass(frozen=True)
class SeenRequest:
    """One request that went through the proxy, and what became of its reply."""

    method: str
    path: str
    headers: dict[str, str]
    status: int | None  # the upstream status; None if upstream failed
    dropped: bool  # the reply was not passed back to the client


Predicate = Callable[[SeenRequest], bool]


class S3FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ValueError(f"upstream {upstream!r}: expected http://host:port")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port
        self.requests: list[SeenRequest] = []
        self._faults: list[Predicate] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="s3-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        """The endpoint URL to give boto3."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def dropped(self) -> list[SeenRequest]:
        """The requests whose replies were dropped."""
        with self._lock:
            return [r for r in self.requests if r.dropped]

    def drop_reply_once(self, predicate: Predicate) -> None:
        """Forward the next request matching ``predicate``, then drop its reply (once)."""
        with self._lock:
            self._faults.append(predicate)

    def start(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _take_fault(self, request: SeenRequest) -> bool:
        with self._lock:
            for i, predicate in enumerate(self._faults):
                if predicate(request):
                    del self._faults[i]
                    return True
        return False

    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" handled

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                probe = SeenRequest(self.command, self.path, dict(self.headers.items()),
                                    None, False)
                drop = proxy._take_fault(probe)
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port,
                                                  timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, reply_headers = resp.status, resp.getheaders()
                except OSError:
                    proxy._record(SeenRequest(probe.method, probe.path, probe.headers, None,
                                              True))
                    self.close_connection = True
                    return
                finally:
                    conn.close()
                proxy._record(SeenRequest(probe.method, probe.path, probe.headers, status, drop))
                if drop:
                    # Applied upstream; the client never hears back.
                    self.close_connection = True
                    return
                self.send_response_only(status)
                for name, value in reply_headers:
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                if self.command == "HEAD":  # no body: pass the object's length through
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        return Handler
