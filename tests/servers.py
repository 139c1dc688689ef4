"""Real HTTP servers on loopback for WSGI and ASGI apps, each in a thread of the test."""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from werkzeug.serving import make_server


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Serve a WSGI app with Werkzeug's threaded server; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn (lifespan on); yields its base URL."""
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """A fresh copy of ``examples/<name>/app.py``: its mirror reads the environment now."""
    return _load(f"example_{name}", EXAMPLES / name / "app.py")


def load_example_helper(name: str) -> ModuleType:
    """A fresh copy of ``examples/<name>.py``, a module the example apps share."""
    return _load(f"example_helper_{name}", EXAMPLES / f"{name}.py")


def _load(module_name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


__all__ = ["load_example", "load_example_helper", "serve_asgi", "serve_wsgi"]
