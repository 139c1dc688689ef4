"""The ``pixelmirror`` command: ``check``, ``worker``, ``outbox stats|replay-dead``,
``fake-graph``.

Settings come from the same ``PIXELMIRROR_*`` variables as the app, so the command sees the
outbox and the credentials the app uses. What a person can fix (a bad setting, an outbox that
cannot be opened or reached) ends the command with one line on stderr and exit code 2, never
a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from types import FrameType
from typing import TYPE_CHECKING, TextIO, cast
from urllib.parse import unquote, urlsplit

from pixelmirror import __version__
from pixelmirror.config import Config, ConfigError
from pixelmirror.delivery import open_sinks
from pixelmirror.delivery.dispatcher import Dispatcher
from pixelmirror.delivery.graph import TokenSource
from pixelmirror.mirror import PixelMirror
from pixelmirror.outbox import Outbox, open_outbox
from pixelmirror.outbox.base import dead_letter_matches
from pixelmirror.testing import cli as fake_cli
from pixelmirror.urls import masked_url

if TYPE_CHECKING:
    from pixelmirror.metrics import MetricsServer

logger = logging.getLogger("pixelmirror.cli")


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
    except (ConfigError, Unavailable) as exc:
        print(f"pixelmirror: {exc}", file=sys.stderr)
        return 2
    return code


class Unavailable(Exception):
    """The outbox cannot be opened or reached: the message names it (password masked) and
    the cause, for one line on stderr."""


def _outbox_errors() -> tuple[type[Exception], ...]:
    """What opening or using an outbox raises when the store, not our code, is at fault."""
    errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
    try:  # redis is optional: its errors only exist where it is installed
        import redis
    except ImportError:
        return errors
    return (*errors, redis.RedisError)


@contextlib.contextmanager
def _opened(config: Config, *, existing: bool = False) -> Iterator[Outbox]:
    """The configured outbox, closed on exit; its open and I/O errors become
    :class:`Unavailable`. ``existing``: a SQLite file must exist already (an inspection must
    not create an empty outbox where a path was mistyped)."""
    url, shown = config.outbox, masked_url(config.outbox)
    if existing and url.startswith("sqlite:"):
        path = unquote(urlsplit(url).path[1:])
        if not os.path.exists(path):
            raise Unavailable(f"outbox {shown}: no such file {path!r}")
    errors = _outbox_errors()
    refusals: tuple[type[Exception], ...] = (ImportError, ValueError, *errors)  # bad URL too
    try:
        outbox = open_outbox(url, max_events=config.queue_size)
    except refusals as exc:
        raise Unavailable(f"outbox {shown} cannot be opened: {_cause(exc)}") from exc
    try:
        yield outbox
    except errors as exc:
        raise Unavailable(f"outbox {shown} is unavailable: {_cause(exc)}") from exc
    finally:
        with contextlib.suppress(*errors):
            outbox.close()


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the driver put in it
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelmirror", description="Meta Pixel + Conversions API mirror."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"pixelmirror {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="send one test event to Meta now and print the answer (exit 0 if accepted, "
        f"1 if refused, {DRY_RUN_EXIT} in a dry run: no token, nothing reached Meta)",
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
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus /metrics and /healthz on port N (needs pixelmirror[prometheus])",
    )
    worker.add_argument(
        "--metrics-host", default="0.0.0.0", help="address to serve them on (default 0.0.0.0)"
    )
    worker.add_argument(
        "--metrics-fold-pixels",
        action="store_true",
        help="no pixel label on the metrics (platforms with thousands of pixels)",
    )
    worker.set_defaults(run=_worker)

    outbox = commands.add_parser("outbox", help="inspect or repair the configured outbox")
    outbox_commands = outbox.add_subparsers(required=True, metavar="ACTION")
    stats = outbox_commands.add_parser("stats", help="pending, in flight, dead letters")
    stats.add_argument("--dead", type=int, default=0, metavar="N", help="also list N dead letters")
    stats.set_defaults(run=_outbox_stats)
    replay = outbox_commands.add_parser("replay-dead", help="move dead letters back to pending")
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many dead letters would be replayed, by pixel and reason; replay none",
    )
    replay.add_argument("--pixel", metavar="ID", help="only the dead letters of this pixel")
    replay.add_argument(
        "--reason",
        metavar="TEXT",
        help="only the dead letters whose reason contains TEXT (any case, taken literally)",
    )
    replay.set_defaults(run=_outbox_replay)

    fake = commands.add_parser(
        "fake-graph",
        help="serve a fake of Meta's /events endpoint on loopback for other processes; "
        "print each accepted event as a JSON line",
    )
    fake_cli.add_arguments(fake)
    fake.set_defaults(run=fake_cli.serve)
    return parser


#: ``pixelmirror check``'s exit code when no token is set: the event was built, not sent.
DRY_RUN_EXIT = 3


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
    # The check talks to Meta directly: no dispatcher, and no outbox to open (a broken one
    # must not stop a test of the connection to Meta).
    config = Config.from_env(dispatch="external", outbox="memory://")
    if not (args.pixel_id or config.pixel_id):  # said in the command line's own words
        print(
            "pixelmirror check: no pixel to check: pass --pixel-id ID or set PIXELMIRROR_PIXEL_ID",
            file=sys.stderr,
        )
        return 2
    mirror = PixelMirror(config, tokens=_load_tokens(args.tokens))
    try:
        result = mirror.check(args.pixel_id, test_event_code=args.test_event_code)
    except ValueError as exc:
        print(f"pixelmirror check: {exc}", file=sys.stderr)
        return 2
    finally:
        mirror.close(timeout=0)
    print(json.dumps(asdict(result), indent=2))
    if result.dry_run:
        print(
            "pixelmirror check: dry run, nothing reached Meta: set PIXELMIRROR_ACCESS_TOKEN "
            "(or pass --tokens) to test the connection",
            file=sys.stderr,
        )
        return DRY_RUN_EXIT
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
    with _opened(config) as outbox:
        if not outbox.durable:
            print(
                "pixelmirror worker: PIXELMIRROR_OUTBOX must be shared with the web processes "
                "(sqlite:///path.db or redis://...), not memory://",
                file=sys.stderr,
            )
            return 2
        outbox.counts()  # unreachable at start: say so now rather than retry in silence
        return _work(config, outbox, tokens, args)


def _work(
    config: Config, outbox: Outbox, tokens: TokenSource | None, args: argparse.Namespace
) -> int:
    sinks = open_sinks(config, tokens=tokens)
    dispatcher = Dispatcher.from_config(config, outbox, sinks, threads=args.concurrency)
    try:
        metrics = None if args.metrics_port is None else _serve_metrics(outbox, dispatcher, args)
    except ConfigError:
        for sink in sinks.values():
            sink.close()
        raise
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("worker: %s, finishing the batches in flight", signal.strsignal(signum))
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dispatcher.start()
    logger.info("worker: sending from %s with %d thread(s)", outbox.url, args.concurrency)
    while not stop.wait(args.status_interval):
        _log_status(dispatcher)
    dispatcher.stop(config.shutdown_timeout)
    _log_status(dispatcher)
    if metrics is not None:
        metrics.close()
    for sink in sinks.values():
        sink.close()
    return 0


def _serve_metrics(
    outbox: Outbox, dispatcher: Dispatcher, args: argparse.Namespace
) -> MetricsServer:
    try:
        from prometheus_client import CollectorRegistry

        from pixelmirror.metrics import MetricsServer, PixelMirrorCollector, health
    except ImportError as exc:
        raise ConfigError(
            f"--metrics-port needs the prometheus extra: pip install 'pixelmirror[prometheus]' "
            f"({exc})"
        ) from None
    registry = CollectorRegistry()
    registry.register(
        PixelMirrorCollector(outbox, lambda: dispatcher, per_pixel=not args.metrics_fold_pixels)
    )
    try:
        server = MetricsServer(
            registry,
            lambda: health(outbox, dispatcher),
            host=args.metrics_host,
            port=args.metrics_port,
        )
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port {args.metrics_port}: cannot listen on {args.metrics_host}: {exc}"
        ) from None
    logger.info(
        "worker: metrics on http://%s:%d/metrics, health on /healthz",
        args.metrics_host,
        server.port,
    )
    return server


def _log_status(dispatcher: Dispatcher) -> None:
    counts = dispatcher.counts
    try:
        stored = dispatcher.outbox.counts()
    except _outbox_errors() as exc:  # an outage mid-run: the senders back off and retry
        outbox = f"outbox unavailable ({_cause(exc)})"
    else:
        outbox = (
            f"outbox pending {stored.pending}, in flight {stored.in_flight}, dead {stored.dead}"
        )
    logger.info(
        "worker: sent %d, retried %d, dead %d | %s | paused pixels: %s",
        counts.sent,
        counts.retried,
        counts.dead,
        outbox,
        ", ".join(dispatcher.paused_pixels) or "none",
    )


def _outbox_stats(args: argparse.Namespace) -> int:
    with _opened(Config.from_env(), existing=True) as outbox:
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
    print(json.dumps(report, indent=2))
    return 0


#: Dead letters a ``replay-dead --dry-run`` reads to break the count down: the newest ones,
#: so a huge pile is summarised from a bounded sample rather than loaded whole.
DRY_RUN_SAMPLE = 10_000


def _outbox_replay(args: argparse.Namespace) -> int:
    filters = {"pixel_id": args.pixel, "reason": args.reason}
    with _opened(Config.from_env(), existing=True) as outbox:
        if not args.dry_run:
            # On a terminal only: scripts read clean output, and the total costs a count.
            line = None
            if sys.stderr.isatty():
                line = _ProgressLine(sys.stderr, outbox.dead_count(**filters))
            try:
                replayed = outbox.replay_dead(**filters, progress=line)
            finally:
                if line is not None:
                    line.end()
            print(json.dumps({"outbox": outbox.url, "filters": filters, "replayed": replayed}))
            return 0
        dead = outbox.dead_count(**filters)
        # The newest letters, those matching the filters broken down by pixel and reason.
        letters = [
            letter
            for letter in (outbox.dead_letters(DRY_RUN_SAMPLE) if dead else [])
            if dead_letter_matches(letter, **filters)
        ]
        groups = Counter((letter.event.pixel_id, letter.reason) for letter in letters)
    report = {
        "outbox": outbox.url,
        "dry_run": True,
        "filters": filters,
        "would_replay": dead,
        "sampled": len(letters),  # matching letters among the newest: the breakdown's
        "by_pixel_and_reason": [
            {"pixel_id": pixel, "reason": reason, "count": count}
            for (pixel, reason), count in groups.most_common()
        ],
    }
    print(json.dumps(report, indent=2))
    return 0


class _ProgressLine:
    """``replayed N of M``, one line on a terminal rewritten in place as N grows."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.shown = False

    def __call__(self, done: int) -> None:
        # Letters buried between the count and the replay's start may push N past M.
        self.stream.write(f"\rreplayed {done} of {max(done, self.total)}")
        self.stream.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


if __name__ == "__main__":
    sys.exit(main())
