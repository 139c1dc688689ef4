"""The loopback HTTP/1.1 server behind :meth:`FakeGraphAPI.serve`.

It turns each HTTP request into an :class:`httpx.Request`, answers it with the fake's
``handle`` and writes the :class:`httpx.Response` back; a simulated timeout hangs up without
an answer. Keep-alive connections are tracked so that stopping the server closes them.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

__all__ = ["serve"]

Handler = Callable[[httpx.Request], httpx.Response]


@contextlib.contextmanager
def serve(handle: Handler, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Answer HTTP on ``host:port`` with ``handle`` in a background thread; yield the base URL."""
    server = _Server((host, port), handle)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="FakeGraphAPI-server",
        daemon=True,
    )
    thread.start()
    try:
        yield server.base_url
    finally:
        # A server left open until the interpreter exits (a demo's, say) is closed by the
        # garbage collector after its thread is gone: waiting for that thread would hang.
        if not sys.is_finalizing():
            server.shutdown()
            server.close_connections()
            server.server_close()
            thread.join()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handle: Handler) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.answer = handle
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.server_name}]" if ":" in self.server_name else self.server_name
        return f"http://{host}:{self.server_port}"

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        # Idle keep-alive connections would otherwise hold handler threads after shutdown.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body would wait for the
    # client's delayed ACK (40 ms) and cap a one-request-at-a-time client at 25 requests/s.
    disable_nagle_algorithm = True
    server_version = "FakeGraphAPI"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no per-request noise on stderr

    def _dispatch(self) -> None:
        body = self._read_body()
        if not self.path.startswith("/"):
            self._send(400, b"bad request target\n", [("Content-Type", "text/plain")])
            return
        headers = [
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in ("content-length", "transfer-encoding")
        ]
        request = httpx.Request(
            self.command, self.server.base_url + self.path, headers=headers, content=body
        )
        try:
            response = self.server.answer(request)
        except httpx.TimeoutException:
            self.close_connection = True  # hang up without answering, like a dead upstream
            return
        self._send(response.status_code, response.content, response.headers.multi_items())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _send(self, status: int, body: bytes, headers: Sequence[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""
