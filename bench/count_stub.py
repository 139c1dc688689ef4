"""A count-only Graph stub: the cheapest server that answers like Meta's ``/events``.

``python bench/count_stub.py`` prints ``URL <base url>`` on stdout and serves until stdin
closes (or SIGTERM). It validates nothing: it reads each HTTP/1.1 request (Content-Length
bodies, keep-alive), counts the events in the body by the occurrences of ``event_name``
(one per event, in JSON and in the SDK's form-encoded array of JSON strings alike) and
answers ``{"events_received":N,"messages":[],"fbtrace_id":"stub"}``. The delivery benchmark
measures the senders against it, not against FakeGraphAPI's validation (about 1.5 ms per
request and 55-70 µs per event, which would cap every sender alike).
"""

from __future__ import annotations

import signal
import socket
import sys
import threading

_EVENT = b"event_name"


def _serve_connection(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                chunk = conn.recv(max(65536, length - len(buffer)))
                if not chunk:
                    return
                buffer += chunk
            body, buffer = buffer[:length], buffer[length:]
            answer = b'{"events_received":%d,"messages":[],"fbtrace_id":"stub"}' % body.count(
                _EVENT
            )
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
            )


def main() -> int:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_serve_connection, args=(conn,), daemon=True).start()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the parent closes our stdin or exits
        stop.set()

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"URL http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
