"""``python -m pixelmirror.testing`` (and ``pixelmirror fake-graph``): a standalone
:class:`FakeGraphAPI` on loopback.

It prints ``FakeGraphAPI listening on <base url>`` on stderr, then each accepted event as
one JSON line on stdout (``pixel_id``, ``test_event_code``, ``partner_agent``, ``event``),
until interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence

from pixelmirror.testing.fake import FakeGraphAPI
from pixelmirror.testing.records import ReceivedEvent

__all__ = ["add_arguments", "main", "serve"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pixelmirror.testing",
        description="Serve a FakeGraphAPI; print each accepted event as a JSON line.",
    )
    add_arguments(parser)
    return serve(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fake server's options, for this module's command and ``pixelmirror fake-graph``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--token", action="append", dest="tokens", help="a valid token (repeat; default: any)"
    )
    parser.add_argument("--app-secret")
    parser.add_argument("--min-api-version", default="v20.0")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int)


def serve(args: argparse.Namespace) -> int:
    """Serve the fake :func:`add_arguments` describes until interrupted."""
    fake = FakeGraphAPI(
        access_tokens=args.tokens,
        app_secret=args.app_secret,
        min_api_version=args.min_api_version,
        failure_rate=args.failure_rate,
        seed=args.seed,
        on_event=_print_json_line,
    )
    try:
        with fake.serve(args.host, args.port) as base_url:
            print(f"FakeGraphAPI listening on {base_url}", file=sys.stderr, flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


def _print_json_line(event: ReceivedEvent) -> None:
    line = {
        "pixel_id": event.pixel_id,
        "test_event_code": event.test_event_code,
        "partner_agent": event.partner_agent,
        "event": event.data,
    }
    print(json.dumps(line, separators=(",", ":")), flush=True)
