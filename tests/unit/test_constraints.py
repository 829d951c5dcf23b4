"""constraints.txt pins every dependency that `make venv` and `make bench-deps` install,
within pyproject's ranges.

A dependency added to pyproject.toml but not to constraints.txt would be
installed at whatever version is newest on the day, which is what the pins
are there to stop; a pin outside its range would make every fresh install fail.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# What scripts/bootstrap.sh installs, and `make bench-deps` adds (the baselines' libraries).
INSTALLED_EXTRAS = ("test", "demo", "bench")


def pins() -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            out[canonicalize_name(name)] = Version(version)
    return out


def installed_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in
            [*project["dependencies"], *(r for e in INSTALLED_EXTRAS for r in extras[e])]]


def test_every_installed_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    for req in installed_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not pinned in constraints.txt: run `make lock`"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned[name]}, outside pyproject's {req}")
