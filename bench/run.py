"""Run pixelmirror's benchmarks: ``python bench/run.py [--quick] [--only NAME,...]``.

Prints a Markdown table (paste-ready) and writes every figure, with each run's raw values,
the machine and the versions, to ``bench/results/latest.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import asgi_overhead
import delivery
import instructions
import memory
import normalize_bench
import outage
import server
import wsgi_overhead
from harness import BENCH_DIR, Row, git_revision, machine, settle, versions

PACKAGES = [
    "pixelmirror", "starlette", "flask", "werkzeug", "uvicorn", "gunicorn",
    "facebook_business", "requests", "httpx", "itsdangerous", "redis", "hiredis",
]  # fmt: skip

BENCHMARKS: dict[str, Callable[[bool], list[Row]]] = {
    "asgi": asgi_overhead.run,
    "wsgi": wsgi_overhead.run,
    "server": server.run,
    "normalize": normalize_bench.run,
    "delivery": delivery.run,
    "memory": memory.run,
    "outage": outage.run,
    "instructions": instructions.run,
}


def _format(value: float, unit: str) -> str:
    if not unit:
        return "-"
    if value >= 1000:
        return f"{value:,.0f} {unit}"
    if value >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}"


def table(rows: list[Row]) -> str:
    lines = [
        "| benchmark | case | result | ratio | target | met | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}x {row.ratio_label}" if row.ratio is not None else ""
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.benchmark} | {row.case} | {_format(row.value, row.unit)} | {ratio} "
            f"| {row.target} | {met} | {row.note} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=120.0,
        help="before each benchmark, wait up to this many seconds for the machine to be "
        "quiet (at most 15%% of its CPUs busy); 0 to start at once",
    )
    parser.add_argument(
        "--output", type=Path, default=BENCH_DIR / "results" / "latest.json", help="JSON file"
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    info = machine()
    print(
        f"pixelmirror bench{' (quick)' if args.quick else ''}: {info['cpu']}, "
        f"{info['nproc']} CPUs, Python {info['python']}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    started = time.time()
    rows: list[Row] = []
    timings: dict[str, float] = {}
    busy: dict[str, float] = {}
    for name in chosen:
        print(f"- {name} ...", end="", flush=True)
        if args.settle > 0:
            busy[name] = settle(args.settle)
            print(f" (others busy {busy[name]:.0%})", end="", flush=True)
        begin = time.perf_counter()
        found = BENCHMARKS[name](args.quick)
        timings[name] = time.perf_counter() - begin
        print(f" {timings[name]:.0f} s", flush=True)
        rows += found
    print()
    print(table(rows))
    result = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": {name: round(seconds, 1) for name, seconds in timings.items()},
        "load_average_after": os.getloadavg(),
        # Share of the CPUs others kept busy just before each benchmark started.
        "busy_before": {name: round(value, 3) for name, value in busy.items()},
        "machine": info,
        "revision": git_revision(),
        "versions": versions(PACKAGES),
        "rows": [asdict(row) for row in rows],
        "table_markdown": table(rows),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    missed = [f"{r.benchmark}: {r.case}" for r in rows if r.met is False]
    print(f"\nwrote {args.output}; {len(missed)} target(s) missed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
