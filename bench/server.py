"""3. Through a real server: uvicorn (Starlette) and gunicorn (Flask) on loopback, driven by
wrk from another process, bare vs wrapped by pixelmirror (and, for uvicorn's constant page,
vs wrapped by Starlette's SessionMiddleware: the reference). A second uvicorn page burns
2 ms of CPU before it answers, as a template page does.

Each server is one worker process pinned to CPU 0; wrk (one thread, 16 keep-alive
connections) runs pinned to CPU 1, so the two do not fight for a core on a 2-core machine.
The visitor is a returning Chrome with its cookies; the wrapped app injects the pixel and
enqueues a PageView per request. Rounds alternate bare and wrapped; each figure is the
median over rounds, each ratio the median of the rounds' own ratios.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asgi_overhead
import server_apps
from harness import (
    BENCH_DIR,
    CHROME_UA,
    FakeGraphProcess,
    Row,
    median,
    quiet_logs,
)

CONNECTIONS = 16
SERVER_CPU = "0"
LOADGEN_CPU = "1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def returning_cookie() -> str:
    """A returning visitor's cookies: signed ``_pm_vid`` and ``_fbp`` as pixelmirror set them,
    and the session cookie as SessionMiddleware set it (same secret key as the servers')."""
    import asyncio

    loop = asyncio.new_event_loop()
    with quiet_logs():
        mirror = asgi_overhead.make_mirror()
        try:
            return asgi_overhead.returning_cookie(loop, asgi_overhead.build_apps(mirror))
        finally:
            mirror.close(timeout=0)
            loop.close()


def _pinned(command: list[str], cpu: str) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", cpu, *command]
    return command


@contextmanager
def serve(
    kind: str, variant: str, graph_url: str | None = None, page: str = "constant"
) -> Iterator[str]:
    port = _free_port()
    env = dict(
        os.environ,
        BENCH_VARIANT=variant,
        BENCH_PAGE=page,
        BENCH_BURN_ROUNDS=str(server_apps.BURN_ROUNDS),
        PYTHONPATH=str(BENCH_DIR),
    )
    env.pop("BENCH_GRAPH_URL", None)
    if graph_url:
        env["BENCH_GRAPH_URL"] = graph_url
    bindir = Path(sys.executable).parent
    if kind == "uvicorn":
        command = [
            sys.executable, "-m", "uvicorn", "--factory", "server_apps:starlette_app",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
    else:
        command = [
            str(bindir / "gunicorn"), "server_apps:flask_app()",
            "--bind", f"127.0.0.1:{port}", "--workers", "1",
            "--worker-class", "gthread", "--threads", "4",
            "--log-level", "warning",
        ]  # fmt: skip
    # The server's log goes to a file: shown only when it fails to start.
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            _pinned(command, SERVER_CPU), env=env, cwd=BENCH_DIR, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            try:
                _wait_ready(url, process)
            except RuntimeError:
                log.seek(0)
                raise RuntimeError(f"{kind} {variant} failed:\n{log.read()[-2000:]}") from None
            yield url
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a benchmark server: politely, then for sure."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            request = urllib.request.Request(url, headers={"User-Agent": CHROME_UA})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not come up")


def wrk(url: str, seconds: float, cookie: str) -> dict[str, float]:
    env = dict(os.environ, BENCH_UA=CHROME_UA, BENCH_COOKIE=cookie)
    command = [
        "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "5s",
        "-s", str(BENCH_DIR / "wrk_report.lua"), url,
    ]  # fmt: skip
    out = subprocess.run(
        _pinned(command, LOADGEN_CPU),
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    result: dict[str, float] = json.loads(line.removeprefix("BENCH_JSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def _check_injected(url: str, cookie: str, expected: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": CHROME_UA, "Cookie": cookie})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    assert (b"<script data-pixelmirror" in body) == expected, url


#: The page through uvicorn that burns 2 ms of CPU keeps at least this share of bare's req/s.
BURN_TARGET = 0.95


def run(quick: bool = False) -> list[Row]:
    if shutil.which("wrk") is None:
        return [
            Row("Real server", "skipped", 0.0, "", note="wrk not found: apt-get install -y wrk")
        ]
    rounds, seconds, warmup = (1, 2.0, 1.0) if quick else (5, 5.0, 2.0)
    cookie = returning_cookie()
    rows: list[Row] = []
    # label, server, variants, page, with a dispatcher thread
    setups = [
        ("uvicorn + Starlette", "uvicorn", ("bare", "pixelmirror", "session"), "constant", False),
        ("uvicorn + Starlette, 2 ms CPU page", "uvicorn", ("bare", "pixelmirror"), "burn", False),
        ("uvicorn + Starlette", "uvicorn", ("bare", "pixelmirror"), "constant", True),
        ("gunicorn gthread + Flask", "gunicorn", ("bare", "pixelmirror"), "constant", False),
    ]
    for label, kind, variants, page, with_dispatcher in setups:
        with FakeGraphProcess(forget=True, cpu=int(LOADGEN_CPU)) as fake, ExitStack() as stack:
            graph_url = fake.url if with_dispatcher else None
            urls = {
                name: stack.enter_context(
                    serve(kind, name, graph_url if name == "pixelmirror" else None, page)
                )
                for name in variants
            }
            for name, url in urls.items():
                _check_injected(url, cookie, expected=name == "pixelmirror")
                wrk(url, warmup, cookie)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
            for _ in range(rounds):
                for name, url in urls.items():
                    runs[name].append(wrk(url, seconds, cookie))
        rows += _rows(label, with_dispatcher, page, runs)
    return rows


def _rows(
    label: str, with_dispatcher: bool, page: str, runs: dict[str, list[dict[str, float]]]
) -> list[Row]:
    rps = {name: median([r["rps"] for r in rs]) for name, rs in runs.items()}
    p99 = {name: median([r["p99_us"] / 1000 for r in rs]) for name, rs in runs.items()}
    errors = {name: sum(r["errors"] for r in rs) for name, rs in runs.items()}
    benchmark = f"Real server ({label})"
    rows = []
    if not with_dispatcher:
        rows.append(
            Row(
                benchmark,
                "bare",
                rps["bare"],
                "req/s",
                note=f"p99 {p99['bare']:.2f} ms",
                extra={"p99_ms": p99["bare"], "errors": errors["bare"], "runs": runs["bare"]},
            )
        )
    for name in runs:
        if name == "bare":
            continue
        # Paired round by round: the machine's speed drifts between rounds more than
        # within one, and each round runs bare and the wrapped servers back to back.
        ratio = median([r["rps"] / b["rps"] for r, b in zip(runs[name], runs["bare"], strict=True)])
        row = Row(
            benchmark,
            "pixelmirror + dispatcher thread" if with_dispatcher else name,
            rps[name],
            "req/s",
            ratio=ratio,
            ratio_label="req/s vs bare",
            note=f"p99 {p99[name]:.2f} ms = {p99[name] / p99['bare']:.2f}x bare"
            + (f" (bare {rps['bare']:,.0f} req/s in these rounds)" if with_dispatcher else ""),
            extra={
                "p99_ms": p99[name],
                "p99_ratio": p99[name] / p99["bare"],
                "bare_rps": rps["bare"],
                "bare_p99_ms": p99["bare"],
                "errors": errors[name],
                "runs": runs[name],
            },
        )
        if name == "pixelmirror" and "session" in rps:
            reference = rps["session"] / rps["bare"]
            row.target = f"≥ SessionMiddleware's ({reference:.2f})"
            row.met = ratio >= reference
        elif name == "pixelmirror" and page == "burn":
            row.target = f"≥ {BURN_TARGET:.2f}"
            row.met = ratio >= BURN_TARGET
        rows.append(row)
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r.benchmark, r.case, round(r.value), r.ratio, r.note)
