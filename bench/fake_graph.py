"""A loopback FakeGraphAPI in a process of its own, so it takes no GIL time from the sender.

``python bench/fake_graph.py [--forget]`` prints ``URL <base url>`` on stdout and serves
until stdin closes (or SIGTERM). ``--forget`` drops the recorded events every second, so a
million-event run does not grow this process without bound.

Meta's Graph API takes the elements of ``data`` either as JSON objects (pixelmirror's form) or
as JSON strings each holding one (what ``facebook_business`` sends: a form-encoded ``data``
whose array elements are ``json.dumps`` of each event). FakeGraphAPI only takes objects, so
this process decodes string elements before validation, which is what Graph itself has to
do with them. It also turns Nagle's algorithm off on the fake's sockets (see below).
Nothing else about the fake changes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from typing import Any

import httpx

import pixelmirror.testing as testing
from pixelmirror.testing import FakeGraphAPI

_parse_request = testing._parse_request


def _parse_sdk_strings(request: httpx.Request) -> Any:
    parsed = _parse_request(request)
    data = parsed.data
    if data and any(isinstance(item, str) for item in data):
        # Left as it is when an element is not JSON: the fake rejects it as Graph would.
        with contextlib.suppress(ValueError):
            parsed.data = [json.loads(item) if isinstance(item, str) else item for item in data]
    return parsed


testing._parse_request = _parse_sdk_strings
# The fake writes a response's headers and its body in two send() calls; with Nagle on, the
# body waits for the client's delayed ACK (40 ms on Linux) whenever the client has nothing
# more to send, which caps any one-request-at-a-time client at about 25 requests/s. Graph's
# front ends do not do that, so the bench turns Nagle off (socketserver's own switch).
testing._Handler.disable_nagle_algorithm = True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forget", action="store_true")
    parser.add_argument("--token", default="bench-token")
    args = parser.parse_args()
    fake = FakeGraphAPI(access_tokens=[args.token])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the parent closes our stdin or exits
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    with fake.serve() as url:
        print(f"URL {url}", flush=True)
        while not stop.wait(1.0):
            if args.forget:
                fake.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
