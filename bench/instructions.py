"""8. Instructions per request: benchmark 1's Starlette page counted by callgrind.

CPU time on a shared VM moves from run to run; an instruction count does not. Each variant
(bare, pixelmirror, SessionMiddleware) and visit (returning, first) is warmed up and then
run inside ``sys.call_tracing`` (a call nothing else makes), in one process under
``valgrind --tool=callgrind``: the requests are counted apart from the imports, the set-up,
the warm-up and each other. The memory outbox is emptied between cases, outside the counts. Without
valgrind the rows say so and the run goes on.

The ratio beside benchmark 1's says how much of pixelmirror's CPU-time ratio is work done
and how much is how fast the machine runs that work.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import Row, quiet_logs

VARIANTS = ("bare", "pixelmirror", "session")
VISITS = ("returning", "first")
CASES = [(variant, visit) for visit in VISITS for variant in VARIANTS]
WARM_UP = 200
_TOTALS = re.compile(r"^totals:\s*(\d+)", re.MULTILINE)


def counts(requests: int) -> dict[tuple[str, str], int]:
    """Instructions that ``requests`` requests of each case take, all counted in one child
    process under callgrind: it dumps its counts as each ``sys.call_tracing`` begins and
    ends, so every second dump holds one case's requests alone."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=sys_call_tracing",
            "--dump-after=sys_call_tracing",
            f"--callgrind-out-file={tmp}/callgrind.out",
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            str(requests),
        ]
        # A fixed hash seed: the same dictionaries, the same count, run after run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        dumps = [Path(tmp, f"callgrind.out.{n}") for n in range(2, 2 * len(CASES) + 1, 2)]
        if done.returncode != 0 or not all(dump.exists() for dump in dumps):
            raise RuntimeError(f"callgrind failed: {done.stderr[-500:]}")
        found = [int(_TOTALS.findall(dump.read_text())[-1]) for dump in dumps]
    return dict(zip(CASES, found, strict=True))


def run(quick: bool = False) -> list[Row]:
    bench = "Instructions (Starlette, callgrind)"
    if shutil.which("valgrind") is None:
        note = "valgrind not installed (apt-get install -y valgrind)"
        return [Row(bench, f"{visit}: pixelmirror", 0.0, "", note=note) for visit in VISITS]
    requests = 100 if quick else 1000
    per_request = {case: total / requests for case, total in counts(requests).items()}
    rows = []
    for visit in VISITS:
        bare = per_request["bare", visit]
        added = {name: per_request[name, visit] - bare for name in ("pixelmirror", "session")}
        for name in VARIANTS:
            row = Row(bench, f"{visit}: {name}", per_request[name, visit] / 1000, "k instr/req")
            if name != "bare":
                row.note = f"+{added[name] / 1000:.0f}k"
                row.extra["added_instructions"] = round(added[name])
            if name == "pixelmirror":
                row.ratio = added["pixelmirror"] / added["session"]
                row.ratio_label = "added / SessionMiddleware's added"
            rows.append(row)
    return rows


def _child(requests: int) -> None:
    """Each case: warm up, then ``requests`` requests inside ``sys.call_tracing``."""
    import asgi_overhead

    loop = asyncio.new_event_loop()
    with quiet_logs():
        mirror = asgi_overhead.make_mirror()
        apps = asgi_overhead.build_apps(mirror)
        cookie = asgi_overhead.returning_cookie(loop, apps)
        for variant, visit in CASES:
            app = apps[variant]
            scope = asgi_overhead.scope_for(cookie if visit == "returning" else None)

            async def batch(app: asgi_overhead.ASGIApp, scope: asgi_overhead.Scope) -> None:
                for _ in range(requests):
                    await asgi_overhead.call(app, scope)

            for _ in range(WARM_UP):
                loop.run_until_complete(asgi_overhead.call(app, scope))
            asgi_overhead.drain(mirror)
            sys.call_tracing(loop.run_until_complete, (batch(app, scope),))
            asgi_overhead.drain(mirror)
    # Counted: leave without the exit's own work (closing the mirror logs its queue).
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(int(sys.argv[2]))
    for r in run(quick="--quick" in sys.argv):
        print(r)
