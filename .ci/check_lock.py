#!/usr/bin/env python3
"""Check requirements.lock against pyproject.toml (and, with --installed, against this Python's packages).

Static checks, always:
  1. every dependency of pyproject.toml (with the extras given by --extra, default: dev) is pinned in the lock;
  2. each pin satisfies pyproject.toml's specifier for it;
  and every line of the lock is an exact ``name==version`` pin, once per name, and the project itself is not in it.
With --installed, also:
  3. each pinned package is installed at the pinned version (importlib.metadata);
  4. the lock holds the whole dependency closure of pyproject.toml, read from the installed packages' metadata,
     and nothing else.

Prints one line per problem and exits 1 if there is any (0 and one summary line otherwise). Stdlib + packaging.
Usage: python .ci/check_lock.py [--lock requirements.lock] [--pyproject pyproject.toml] [--extra dev] [--installed]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors packaging
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def applies(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({**default_environment(), "extra": extra})


def read_lock(path: Path, problems: list[str]) -> dict[str, str]:
    """{canonical name: version} from the lock's ``name==version`` lines; comments and option lines are skipped."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith(("#", "--hash")):
            continue
        if line.startswith("-"):
            problems.append(f"{path.name}:{number}: option line, not a pin: {line}")
            continue
        match = PIN.match(line)
        if match is None:
            problems.append(f"{path.name}:{number}: not an exact name==version pin: {line}")
            continue
        name = canonicalize_name(match[1])
        if name in pins:
            problems.append(f"{path.name}:{number}: {name} pinned twice ({pins[name]} and {match[2]})")
        pins[name] = match[2]
    return pins


def closure(roots: list[Requirement], problems: list[str]) -> set[str]:
    """Canonical names of the installed packages that ``roots`` need, extras and markers included."""
    seen: dict[str, set[str]] = {}  # name -> extras already expanded
    todo = [(canonicalize_name(r.name), set(r.extras)) for r in roots]
    while todo:
        name, extras = todo.pop()
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # reported by the installed-version check
        for line in requires:
            req = Requirement(line)
            if any(applies(req, extra) for extra in ("", *sorted(seen[name]))):
                todo.append((canonicalize_name(req.name), set(req.extras)))
    return set(seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--extra", action="append", help="optional-dependency group(s) the lock covers (default: dev)")
    parser.add_argument("--installed", action="store_true", help="also check this Python's installed packages")
    args = parser.parse_args(argv)
    extras = args.extra or ["dev"]

    problems: list[str] = []
    project = tomllib.loads(args.pyproject.read_text())["project"]
    lines = [(line, "") for line in project.get("dependencies", [])]
    groups = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in groups:
            problems.append(f"{args.pyproject.name}: no optional-dependencies group {extra!r}")
        lines += [(line, extra) for line in groups.get(extra, [])]
    if not args.lock.is_file():
        print(f"{args.lock}: missing; generate it with: make lock")
        return 1
    pins = read_lock(args.lock, problems)
    self_name = canonicalize_name(project["name"])
    if self_name in pins:
        problems.append(f"{args.lock.name}: pins the project itself ({self_name}); install it with pip install --no-deps -e .")

    roots: list[Requirement] = []
    for line, extra in lines:
        where = f"{args.pyproject.name} ({'dependencies' if not extra else f'[{extra}]'})"
        try:
            req = Requirement(line)
        except InvalidRequirement as error:
            problems.append(f"{where}: cannot parse {line!r}: {error}")
            continue
        if not applies(req, extra):
            continue
        roots.append(req)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{where}: {line} is not pinned in {args.lock.name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{where}: {line} is not satisfied by the pin {name}=={pins[name]} in {args.lock.name}")

    if args.installed:
        for name, version in sorted(pins.items()):
            try:
                installed = metadata.version(name)
            except metadata.PackageNotFoundError:
                problems.append(f"installed: {name} is not installed ({args.lock.name} pins {version})")
                continue
            if not SpecifierSet(f"=={version}").contains(installed, prereleases=True):
                problems.append(f"installed: {name} {installed}, {args.lock.name} pins {version}")
        needed = closure(roots, problems) - {self_name}
        direct = {canonicalize_name(r.name) for r in roots}  # reported above when missing
        for name in sorted(needed - pins.keys() - direct):
            problems.append(f"{args.lock.name}: {name} is needed (dependency closure of pyproject.toml) but not pinned")
        for name in sorted(pins.keys() - needed - {self_name}):
            problems.append(f"{args.lock.name}: {name} is pinned but nothing in pyproject.toml's closure needs it")

    for problem in problems:
        print(problem)
    if not problems:
        checked = "pyproject.toml" + (" and the installed packages" if args.installed else "")
        print(f"{args.lock.name}: {len(pins)} pins agree with {checked}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
