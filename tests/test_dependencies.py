"""Dependency bounds: every floor is met here, and a CI job can test the floors.

``pyproject.toml`` gives each runtime dependency a lower bound; an upper
bound (or an exclusion) is allowed only with a comment on its line naming
the release that broke the package. ``deploy/constraints.txt``, the lock of
the image, pins versions inside those bounds.

Testing the floors themselves is one more CI job::

    python tests/test_dependencies.py --minimum > minimum.txt
    pip install -r minimum.txt ".[test]"
    SPECUFEX_MINIMUM_VERSIONS=1 python -m pytest

In that job this module also checks that the environment really holds the
floors, so a green run means the floors were tested, not newer releases.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
CONSTRAINTS = REPO / "deploy" / "constraints.txt"

#: floors the code itself needs, with what needs them
KNOWN_FLOORS = {
    "zarr": (
        "3.0",
        "the zarr-python 3 API: zarr.errors.BaseZarrError, Group.create_array",
    ),
}
#: operators that bound a version from above or cut releases out
_CAPPING = {"<", "<=", "==", "!=", "~=", "==="}


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]


def requirements(extras: tuple[str, ...] = ("s3",)) -> list[Requirement]:
    """Runtime requirements of the package (and the given extras)."""
    project = _project()
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def floor(requirement: Requirement) -> Version | None:
    """The version a ``>=`` specifier names, or None without one."""
    floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return max(floors) if floors else None


def _line_of(requirement: Requirement) -> str:
    text = PYPROJECT.read_text(encoding="utf-8")
    match = re.search(rf'^\s*"{re.escape(str(requirement))}".*$', text, re.MULTILINE)
    assert match, f"{requirement} not found on a line of its own in pyproject.toml"
    return match[0]


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned
    return pins


RUNTIME = requirements()


@pytest.mark.parametrize("requirement", RUNTIME, ids=str)
def test_every_runtime_dependency_has_a_floor_met_here(requirement) -> None:
    assert floor(requirement) is not None, f"{requirement} has no lower bound (>=)"
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        pytest.fail(f"{requirement.name} is not installed")

    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{requirement.name} {installed} is installed, outside {requirement.specifier}"
    )


@pytest.mark.parametrize("requirement", RUNTIME, ids=str)
def test_upper_bounds_name_the_release_that_broke_the_package(requirement) -> None:
    capped = [s for s in requirement.specifier if s.operator in _CAPPING]
    if not capped:
        return
    comment = _line_of(requirement).partition("#")[2].strip()

    assert len(comment.split()) >= 3, (
        f"{requirement} caps the version without a comment naming the break"
    )


@pytest.mark.parametrize("name", sorted(KNOWN_FLOORS))
def test_floors_are_at_least_what_the_code_needs(name) -> None:
    needed, why = KNOWN_FLOORS[name]
    requirement = next(r for r in RUNTIME if canonicalize_name(r.name) == name)

    assert floor(requirement) >= Version(needed), f"{name} needs >= {needed}: {why}"


@pytest.mark.parametrize("requirement", RUNTIME, ids=str)
def test_the_image_lock_pins_inside_the_bounds(requirement) -> None:
    pins = _pins()
    pinned = pins.get(canonicalize_name(requirement.name))

    assert pinned is not None, f"{requirement.name} is not pinned in {CONSTRAINTS.name}"
    assert requirement.specifier.contains(pinned, prereleases=True), (
        f"{CONSTRAINTS.name} pins {requirement.name}=={pinned}, outside "
        f"{requirement.specifier}"
    )


@pytest.mark.skipif(
    os.environ.get("SPECUFEX_MINIMUM_VERSIONS") != "1",
    reason="only in the minimum-versions job (SPECUFEX_MINIMUM_VERSIONS=1)",
)
def test_minimum_versions_job_runs_on_the_floors() -> None:
    newer = {
        r.name: version(r.name) for r in RUNTIME if Version(version(r.name)) != floor(r)
    }

    assert not newer, f"not at their floors: {newer}"


def minimum_requirements() -> list[str]:
    """``name==floor`` for every runtime dependency, for the minimum-versions job."""
    return [f"{r.name}=={floor(r)}" for r in RUNTIME]


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] != ["--minimum"]:
        sys.exit("usage: python tests/test_dependencies.py --minimum")
    print("\n".join(minimum_requirements()))
