"""The ``pixelmirror`` command: ``check``, ``worker``, ``outbox stats|replay-dead``.

Settings come from the same ``PIXELMIRROR_*`` variables as the app, so the command sees the
outbox and the credentials the app uses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from types import FrameType
from typing import cast

from pixelmirror.config import Config, ConfigError
from pixelmirror.delivery import open_sinks
from pixelmirror.delivery.dispatcher import Dispatcher
from pixelmirror.delivery.graph import TokenSource
from pixelmirror.mirror import PixelMirror
from pixelmirror.outbox import open_outbox

logger = logging.getLogger("pixelmirror")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # httpx logs every request at INFO: one line per batch is noise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"pixelmirror: {exc}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelmirror", description="Meta Pixel + Conversions API mirror."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check", help="send one test event to Meta now and print the answer (exit 0 if accepted)"
    )
    check.add_argument("--pixel-id", help="default: PIXELMIRROR_PIXEL_ID")
    check.add_argument("--test-event-code", help="default: PIXELMIRROR_TEST_EVENT_CODE")
    check.add_argument("--tokens", metavar="MODULE:FUNCTION", help=_TOKENS_HELP)
    check.set_defaults(run=_check)

    worker = commands.add_parser(
        "worker", help="send what the configured outbox holds until SIGTERM or SIGINT"
    )
    worker.add_argument("--concurrency", type=int, default=2, help="sender threads (default 2)")
    worker.add_argument(
        "--status-interval", type=float, default=60.0, help="seconds between status lines"
    )
    worker.add_argument("--tokens", metavar="MODULE:FUNCTION", help=_TOKENS_HELP)
    worker.set_defaults(run=_worker)

    outbox = commands.add_parser("outbox", help="inspect or repair the configured outbox")
    outbox_commands = outbox.add_subparsers(required=True, metavar="ACTION")
    stats = outbox_commands.add_parser("stats", help="pending, in flight, dead letters")
    stats.add_argument("--dead", type=int, default=0, metavar="N", help="also list N dead letters")
    stats.set_defaults(run=_outbox_stats)
    replay = outbox_commands.add_parser("replay-dead", help="move dead letters back to pending")
    replay.set_defaults(run=_outbox_replay)
    return parser


_TOKENS_HELP = (
    "a function pixel_id -> access token, for platforms with a token per customer "
    "(default: PIXELMIRROR_ACCESS_TOKEN)"
)


def _load_tokens(spec: str | None) -> TokenSource | None:
    """Import ``module:function``, the resolver of a platform's tokens."""
    if spec is None:
        return None
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"--tokens must be MODULE:FUNCTION, got {spec!r}")
    try:
        resolver = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--tokens {spec}: {exc}") from None
    if not callable(resolver):
        raise ConfigError(f"--tokens {spec} is not a function")
    return cast(TokenSource, resolver)


def _check(args: argparse.Namespace) -> int:
    # The check talks to Meta directly: no dispatcher needed.
    config = Config.from_env(dispatch="external")
    mirror = PixelMirror(config, tokens=_load_tokens(args.tokens))
    try:
        result = mirror.check(args.pixel_id, test_event_code=args.test_event_code)
    except ValueError as exc:
        print(f"pixelmirror check: {exc}", file=sys.stderr)
        return 2
    finally:
        mirror.close(timeout=0)
    print(json.dumps(asdict(result), indent=2))
    return 0 if result.ok else 1


def _worker(args: argparse.Namespace) -> int:
    config = Config.from_env()
    tokens = _load_tokens(args.tokens)
    if config.dry_run and tokens is None:
        print(
            "pixelmirror worker: PIXELMIRROR_ACCESS_TOKEN, --tokens or PIXELMIRROR_SINK "
            "is required to send",
            file=sys.stderr,
        )
        return 2
    if args.concurrency < 1:
        print("pixelmirror worker: --concurrency must be at least 1", file=sys.stderr)
        return 2
    outbox = open_outbox(config.outbox, max_events=config.queue_size)
    if not outbox.durable:
        outbox.close()
        print(
            "pixelmirror worker: PIXELMIRROR_OUTBOX must be shared with the web processes "
            "(sqlite:///path.db or redis://...), not memory://",
            file=sys.stderr,
        )
        return 2
    sinks = open_sinks(config, tokens=tokens)
    dispatcher = Dispatcher.from_config(config, outbox, sinks, threads=args.concurrency)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info(
            "pixelmirror worker: %s, finishing the batches in flight", signal.strsignal(signum)
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dispatcher.start()
    logger.info(
        "pixelmirror worker: sending from %s with %d thread(s)", outbox.url, args.concurrency
    )
    while not stop.wait(args.status_interval):
        _log_status(dispatcher)
    dispatcher.stop(config.shutdown_timeout)
    _log_status(dispatcher)
    for sink in sinks.values():
        sink.close()
    outbox.close()
    return 0


def _log_status(dispatcher: Dispatcher) -> None:
    counts, outbox = dispatcher.counts, dispatcher.outbox.counts()
    logger.info(
        "pixelmirror worker: sent %d, retried %d, dead %d | outbox pending %d, in flight %d, "
        "dead %d | paused pixels: %s",
        counts.sent,
        counts.retried,
        counts.dead,
        outbox.pending,
        outbox.in_flight,
        outbox.dead,
        ", ".join(dispatcher.paused_pixels) or "none",
    )


def _outbox_stats(args: argparse.Namespace) -> int:
    config = Config.from_env()
    outbox = open_outbox(config.outbox, max_events=config.queue_size)
    report: dict[str, object] = {"outbox": outbox.url, **asdict(outbox.counts())}
    report["unfinished_by_pixel"] = outbox.unfinished_by_pixel()
    if args.dead:
        report["dead_letters"] = [
            {
                "event_id": letter.event.event_id,
                "event_name": letter.event.event_name,
                "pixel_id": letter.event.pixel_id,
                "reason": letter.reason,
                "died_at": letter.died_at,
            }
            for letter in outbox.dead_letters(args.dead)
        ]
    outbox.close()
    print(json.dumps(report, indent=2))
    return 0


def _outbox_replay(args: argparse.Namespace) -> int:
    config = Config.from_env()
    outbox = open_outbox(config.outbox, max_events=config.queue_size)
    replayed = outbox.replay_dead()
    outbox.close()
    print(json.dumps({"outbox": outbox.url, "replayed": replayed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
