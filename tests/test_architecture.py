"""The package's shape: no import cycle, and frameworks named only by their adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pixelmirror

PACKAGE = Path(pixelmirror.__file__).parent
FRAMEWORKS = frozenset({"flask", "django", "starlette", "werkzeug"})
# The only modules that may import a framework: the adapters and their public names.
ADAPTERS = frozenset(
    {
        "pixelmirror.web.wsgi",
        "pixelmirror.web.asgi",
        "pixelmirror.wsgi",
        "pixelmirror.asgi",
        "pixelmirror.django",
    }
)
# The Django package (middleware, app, template tags): optional, imported by nothing else.
DJANGO = "pixelmirror.django"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(source: str, package: str) -> set[str]:
    """Every module a module of ``package`` with this source imports, at module level or in a
    function, type-only or not; ``from a import b`` counts as ``a.b`` when that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            modules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(modules or {base})
    return found


def imported(name: str) -> set[str]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_of(path.read_text(), package)


def graph() -> dict[str, set[str]]:
    return {name: {other for other in imported(name) if other in MODULES} for name in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for other in sorted(edges[node]):
            if state.get(other) == 1:
                return [*path[path.index(other) :], other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or ())


def test_only_the_adapters_name_a_framework() -> None:
    naming = {
        name: sorted(framework)
        for name in MODULES
        if name not in ADAPTERS
        and not name.startswith(f"{DJANGO}.")
        and (framework := {m.split(".")[0] for m in imported(name)} & FRAMEWORKS)
    }
    assert naming == {}


def test_nothing_outside_the_django_package_imports_it() -> None:
    importers = {
        name
        for name in MODULES
        if not (name == DJANGO or name.startswith(f"{DJANGO}."))
        and any(m == DJANGO or m.startswith(f"{DJANGO}.") for m in imported(name))
    }
    assert importers == set()


def test_the_web_package_never_imports_the_facade() -> None:
    importers = {
        name
        for name in MODULES
        if name.startswith("pixelmirror.web")
        and imported(name) & {"pixelmirror.mirror", "pixelmirror"}
    }
    assert importers == set()


@pytest.mark.parametrize(
    ("edges", "cyclic"),
    [
        pytest.param({"a": {"b"}, "b": {"c"}, "c": set()}, False, id="chain"),
        pytest.param({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False, id="diamond"),
        pytest.param({"a": {"b"}, "b": {"a"}}, True, id="two"),
        pytest.param({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True, id="three"),
        pytest.param({"a": {"a"}}, True, id="self"),
    ],
)
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], cyclic: bool) -> None:
    assert (find_cycle(edges) is not None) is cyclic


def test_function_level_type_only_and_relative_imports_count() -> None:
    source = """
from typing import TYPE_CHECKING
from pixelmirror import meta
from . import carry
from .response import Plan
if TYPE_CHECKING:
    from pixelmirror.mirror import PixelMirror
def later():
    import pixelmirror.outbox.redis
"""
    assert imports_of(source, "pixelmirror.web") >= {
        "pixelmirror.meta",
        "pixelmirror.web.carry",
        "pixelmirror.web.response",
        "pixelmirror.mirror",
        "pixelmirror.outbox.redis",
    }


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def test_no_log_message_repeats_the_logger_name_as_a_prefix() -> None:
    """Every logger is ``pixelmirror.<concern>``: a message that starts with "pixelmirror"
    would print it twice (``pixelmirror.delivery: pixelmirror: ...``)."""
    doubled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and node.args
            ):
                first = node.args[1] if node.func.attr == "log" else node.args[0]
                if isinstance(first, ast.Constant) and str(first.value).startswith("pixelmirror"):
                    doubled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert doubled == []
