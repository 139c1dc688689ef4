"""2. Request overhead, WSGI: the same page from a Flask app, driven in-process.

Variants: the bare app; ``app.wsgi_app`` wrapped by pixelmirror (memory outbox,
``dispatch="external"``); and the reference, Flask's own signed session cookie keeping a
visitor id (``session["vid"]``) on the same page. Returning visitor and first visit.
"""

from __future__ import annotations

import io
import secrets
import sys
from collections.abc import Callable, Iterable
from typing import Any

from asgi_overhead import THIRD_PARTY_COOKIES, _rows, drain, make_mirror
from flask import Flask, session
from harness import BROWSER_HEADERS, PAGE, SECRET_KEY, Row, cpu_ns, interleaved, quiet_logs

from pixelmirror import PixelMirror

Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Any], Iterable[bytes]]


def make_flask(variant: str, mirror: PixelMirror | None = None) -> Flask:
    app = Flask(f"bench_{variant}")

    if variant == "session":
        # Only here: with a SECRET_KEY Flask opens (verifies) the session cookie on every
        # request, whether the view reads it or not.
        app.config["SECRET_KEY"] = SECRET_KEY

        @app.get("/")
        def page_with_session() -> bytes:
            # The reference: Flask's signed session cookie remembering the visitor.
            if "vid" not in session:
                session["vid"] = secrets.token_urlsafe(16)
            return PAGE

    else:

        @app.get("/")
        def page() -> bytes:
            return PAGE

    if variant == "pixelmirror":
        assert mirror is not None
        # arg-type: pixelmirror's StartResponse protocol takes exc_info as a real triple or
        # None, typeshed's (which Flask uses) also (None, None, None).
        app.wsgi_app = mirror.wsgi(app.wsgi_app)  # type: ignore[method-assign,arg-type]
    return app


def environ_for(cookie: str | None) -> Environ:
    environ: Environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in BROWSER_HEADERS:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    return environ


class Response:
    status = ""
    headers: list[tuple[str, str]]
    body = b""


def call(app: WSGIApp, environ: Environ) -> Response:
    response = Response()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        response.status, response.headers = status, headers
        return lambda data: None

    # Werkzeug and Flask write into the environ: a fresh copy for every request.
    result = app(dict(environ), start_response)
    try:
        response.body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return response


def set_cookies(response: Response) -> list[str]:
    assert response.status.startswith("200"), response.status
    return [v.split(";", 1)[0] for n, v in response.headers if n.lower() == "set-cookie"]


def run(quick: bool = False) -> list[Row]:
    rounds, number = (3, 300) if quick else (15, 2000)
    rows: list[Row] = []
    with quiet_logs():
        mirror = make_mirror()
        try:
            apps: dict[str, WSGIApp] = {
                name: make_flask(name, mirror) for name in ("bare", "pixelmirror", "session")
            }
            first = environ_for(None)
            jar = [THIRD_PARTY_COOKIES]
            for name in ("pixelmirror", "session"):
                jar += set_cookies(call(apps[name], first))
            cookie = "; ".join(jar)
            for environ, visit in ((environ_for(cookie), "returning"), (first, "first")):
                assert call(apps["bare"], environ).body == PAGE
                out = call(apps["pixelmirror"], environ)
                assert b"<script data-pixelmirror" in out.body
                assert bool(set_cookies(out)) == (visit == "first")
                out = call(apps["session"], environ)
                assert bool(set_cookies(out)) == (visit == "first")

            def timer(app: WSGIApp, environ: Environ) -> Callable[[], float]:
                def case() -> float:
                    start = cpu_ns()
                    for _ in range(number):
                        call(app, environ)
                    elapsed = (cpu_ns() - start) / number / 1000
                    drain(mirror)
                    return elapsed

                return case

            for visit, environ in (("returning", environ_for(cookie)), ("first", first)):
                for app in apps.values():
                    for _ in range(50):
                        call(app, environ)
                drain(mirror)
                results = interleaved(
                    {name: timer(app, environ) for name, app in apps.items()}, rounds
                )
                rows += _rows("WSGI (Flask)", visit, results, "session", "Flask session")
        finally:
            mirror.close(timeout=0)
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r.case, round(r.value, 1), r.note, r.ratio)
