"""A loopback FakeGraphAPI in a process of its own, so it takes no GIL time from the sender.

``python bench/fake_graph.py [--forget]`` prints ``URL <base url>`` on stdout and serves
until stdin closes (or SIGTERM). ``--forget`` drops the recorded events every second, so a
million-event run does not grow this process without bound.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from pixelmirror.testing import FakeGraphAPI


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
