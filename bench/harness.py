"""Shared pieces of the benchmarks: timing, statistics, the page, the request headers."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

PIXEL_ID = "1234567890"
ACCESS_TOKEN = "bench-token"
SECRET_KEY = "bench-secret-key-0123456789abcdef"
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
# Headers a browser sends for a page; the Host is 127.0.0.1:8000 everywhere.
BROWSER_HEADERS: tuple[tuple[str, str], ...] = (
    ("host", "127.0.0.1:8000"),
    ("user-agent", CHROME_UA),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("accept-language", "en-US,en;q=0.9"),
    ("accept-encoding", "gzip, deflate, br"),
    ("referer", "https://www.example.com/"),
)


def html_page(size: int = 30 * 1024) -> bytes:
    """A plain ~30 KB HTML page with a ``<head>`` near the top, as most sites send."""
    head = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<title>Catalogue</title>\n<link rel="stylesheet" href="/static/site.css">\n'
        "</head>\n<body>\n<main>\n"
    )
    tail = '</main>\n<script src="/static/site.js"></script>\n</body>\n</html>\n'
    parts = [head]
    total = len(head) + len(tail)
    index = 0
    while total < size:
        item = (
            f'<article class="product" id="p{index}"><h2>Product {index}</h2>'
            f"<p>A sturdy thing of the {index % 7}th kind, sold by the dozen, shipped "
            f'within two days.</p><a href="/product/{index}">details</a></article>\n'
        )
        parts.append(item)
        total += len(item)
        index += 1
    parts.append(tail)
    return "".join(parts).encode()


PAGE = html_page()


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    case: str
    value: float
    unit: str
    #: Ratio against the reference of this benchmark, when there is one.
    ratio: float | None = None
    ratio_label: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def cpu_ns() -> int:
    """CPU time of the whole process, every thread included (work moved to a background
    thread is still paid for). In-process figures use it rather than the wall clock: time
    spent descheduled (a neighbour's test suite on a shared machine) does not count, while
    everything the process runs, garbage collection included, does."""
    return time.process_time_ns()


def per_call_us(fn: Callable[[], object], number: int) -> float:
    """Mean CPU µs per call of ``fn`` over ``number`` calls (gc collected first, left on)."""
    gc.collect()
    start = cpu_ns()
    for _ in range(number):
        fn()
    return (cpu_ns() - start) / number / 1000


def interleaved(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every case once per round, in the same order, and collect what each returned.

    Interleaving spreads a noisy neighbour or a CPU frequency change over all cases alike,
    so ratios of the same round stay fair.
    """
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            results[name].append(case())
    return results


def paired_added(results: dict[str, list[float]], case: str, base: str) -> float:
    """Median over rounds of ``case - base``: the added cost, paired round by round."""
    return median([c - b for c, b in zip(results[case], results[base], strict=True)])


@contextmanager
def quiet_logs() -> Iterator[None]:
    import logging

    logger = logging.getLogger("pixelmirror")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory"] = f"{int(mem) // 1024 // 1024} GiB"
    except (OSError, IndexError, ValueError):
        pass
    return info


def versions(names: Sequence[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def venv_bin(name: str) -> str:
    """A console script of the interpreter running the bench (its venv's ``bin``)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate)


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    rev = out.stdout.strip() or "unknown"
    return rev + ("+dirty src" if dirty.stdout.strip() else "")


class FakeGraphProcess:
    """``bench/fake_graph.py`` (or, with ``stub``, ``bench/count_stub.py``) as a child
    process; ``url`` once it listens."""

    def __init__(self, *, forget: bool = False, cpu: int | None = None, stub: bool = False) -> None:
        if stub:
            command = [sys.executable, str(BENCH_DIR / "count_stub.py")]
        else:
            command = [sys.executable, str(BENCH_DIR / "fake_graph.py"), "--token", ACCESS_TOKEN]
        if forget:
            command.append("--forget")
        if cpu is not None and (os.cpu_count() or 1) > cpu:
            command = ["taskset", "-c", str(cpu), *command]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("URL "):
            self.close()
            raise RuntimeError(f"{command[-1]} did not start: {line!r}")
        self.url = line.split()[1]

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> FakeGraphProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies over all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def busy_fraction(window: float = 2.0) -> float:
    """Share of all CPUs busy (0-1) over ``window`` seconds: other people's work, when we
    are not running anything ourselves."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(window)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else 0.0


def settle(limit: float, threshold: float = 0.15) -> float:
    """Wait (at most ``limit`` seconds) until the machine is quiet: at most ``threshold`` of
    its CPUs busy over 2 s. Returns the last busy share measured."""
    deadline = time.monotonic() + limit
    busy = busy_fraction()
    while busy > threshold and time.monotonic() < deadline:
        busy = busy_fraction()
    return busy
