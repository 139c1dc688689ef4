"""The release: one source for the version, the licence, the changelog, what the sdist holds.

The sdist itself is built by ``.ci/run`` (``python -m build``), which then runs the sdist test
with ``PIXELMIRROR_SDIST`` naming the archive; without it that test is skipped.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import pytest

import pixelmirror

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the checks are the same on any


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        data: dict[str, object] = tomllib.load(file)
    return data


def test_the_version_is_written_once_and_pyproject_reads_it() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    assert "version" not in project
    assert "version" in project["dynamic"]
    tool = _pyproject()["tool"]
    assert isinstance(tool, dict)
    assert tool["setuptools"]["dynamic"]["version"] == {"attr": "pixelmirror.__version__"}
    # PEP 440: release, optional pre-release, optional .devN
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", pixelmirror.__version__)


def test_the_changelog_has_an_entry_for_this_version() -> None:
    release = re.match(r"\d+\.\d+\.\d+", pixelmirror.__version__)
    assert release is not None
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert headings[0] == release[0]


def test_the_licence_is_mit_in_the_file_and_in_the_metadata() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 ")
    data = _pyproject()
    project = data["project"]
    assert isinstance(project, dict)
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    build = data["build-system"]
    assert isinstance(build, dict)
    assert "setuptools>=77" in build["requires"]  # the first to read an SPDX license string


@pytest.mark.skipif(
    not os.environ.get("PIXELMIRROR_SDIST"), reason="PIXELMIRROR_SDIST names no built sdist"
)
def test_the_sdist_holds_the_package_docs_and_licence_and_no_tests() -> None:
    sdist = Path(os.environ["PIXELMIRROR_SDIST"])
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
        top = {name.partition("/")[0] for name in archive.getnames()}
        info = archive.extractfile(f"{top.pop()}/PKG-INFO")
        assert info is not None
        metadata = info.read().decode()
    assert not top  # one top-level directory
    package = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "src" / "pixelmirror").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    expected = {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", *package}
    expected |= {str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md")}
    assert expected <= names, expected - names
    for left_out in ("tests/", "bench/", "examples/", ".ci/"):
        assert not any(name.startswith(left_out) for name in names), left_out
    assert f"\nVersion: {pixelmirror.__version__}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata
