"""``make upgrade-check``: would the newest allowed versions still pass the tests?

Resolves ``requirements.txt`` to the newest versions its ranges allow (``uv pip compile --upgrade``,
the same universal resolution as ``make lock``), prints which packages would move against
``requirements.lock``, installs that set into a throwaway virtual environment and runs the test
suite there, then prints what failed. Nothing in the repository or in ``.venv`` changes.

``--lift-bounds`` also drops every upper bound and exact pin of ``requirements.txt`` first: what
the newest releases would do if our bounds were gone (each bound has a comment naming the
release that broke something; this is how to see whether it still does).

Exit status: 0 when the tests pass on the newest set, 1 when any fails, 2 when resolving or
installing failed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")
COMPILE = ["pip", "compile", "--universal", "--python-version", "3.11",
           "--no-emit-package", "skysurvey", "--quiet"]
UPPER = {"<", "<=", "==", "===", "~=", "!="}


def pins(lock_text: str) -> dict[str, set[str]]:
    """``name -> {"version[ ; marker]", ...}`` of a lock file's requirement lines."""
    found: dict[str, set[str]] = defaultdict(set)
    for line in lock_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        version = str(req.specifier).removeprefix("==")
        found[req.name.lower()].add(f"{version} ; {req.marker}" if req.marker else version)
    return dict(found)


def moves(locked: dict[str, set[str]], newest: dict[str, set[str]]) -> list[str]:
    """One line per package whose pins differ: ``name: old -> new`` (added/removed too)."""
    lines = []
    for name in sorted(set(locked) | set(newest)):
        old, new = locked.get(name, set()), newest.get(name, set())
        if old != new:
            lines.append(f"  {name}: {', '.join(sorted(old)) or '(absent)'} -> "
                         f"{', '.join(sorted(new)) or '(absent)'}")
    return lines


def without_upper_bounds(requirements_text: str) -> str:
    """requirements.txt with every upper bound and exact pin dropped (lower bounds kept)."""
    out = []
    for raw in requirements_text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            out.append(raw)
            continue
        req = Requirement(line)
        kept = ",".join(str(s) for s in req.specifier if s.operator not in UPPER)
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f" ; {req.marker}" if req.marker else ""
        out.append(f"{req.name}{extras}{kept}{marker}")
    return "\n".join(out) + "\n"


def failures(pytest_output: str) -> list[str]:
    """pytest's short summary lines for failures and errors (``-rfE``)."""
    return [line for line in pytest_output.splitlines()
            if re.match(r"^(FAILED|ERROR) ", line)]


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], text=True, capture_output=True, **kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lift-bounds", action="store_true",
                        help="drop the upper bounds and exact pins of requirements.txt first")
    parser.add_argument("--no-tests", action="store_true",
                        help="only resolve and print what would move")
    parser.add_argument("--pytest-args", default="-n auto -q",
                        help="arguments for the test run (default: %(default)s)")
    args = parser.parse_args(argv)
    if not UV.exists():
        print(f"upgrade-check: {UV} not found: run `make install` first", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="upgrade-check-"))
    try:
        # The packages without this project's own `-e .` (requirements.txt lists the same
        # ones as pyproject.toml, whose bounds would otherwise come back with it); the project
        # goes into the throwaway venv with --no-deps.
        text = (REPO / "requirements.txt").read_text()
        if args.lift_bounds:
            text = without_upper_bounds(text)
        requirements = work / "requirements.txt"
        requirements.write_text("\n".join(line for line in text.splitlines()
                                           if line.strip() != "-e ."))
        newest = work / "newest.lock"
        done = run([UV, *COMPILE, "--upgrade", requirements, "-o", newest], cwd=REPO)
        if done.returncode:
            print(f"upgrade-check: resolving failed:\n{done.stderr}", file=sys.stderr)
            return 2
        moved = moves(pins((REPO / "requirements.lock").read_text()), pins(newest.read_text()))
        what = "newest versions with the bounds lifted" if args.lift_bounds else \
            "newest allowed versions"
        print(f"{what}: {len(moved)} package(s) would move against requirements.lock")
        print("\n".join(moved))
        if args.no_tests:
            return 0
        venv = work / "venv"
        for step in ([UV, "venv", "--quiet", "--python", sys.executable, venv],
                     [UV, "pip", "install", "--quiet", "--python", venv / "bin" / "python",
                      "-r", requirements, "-c", newest],
                     [UV, "pip", "install", "--quiet", "--python", venv / "bin" / "python",
                      "--no-deps", "-e", REPO]):
            done = run(step, cwd=REPO)
            if done.returncode:
                print(f"upgrade-check: installing failed:\n{done.stderr}", file=sys.stderr)
                return 2
        print(f"running the tests on them ({args.pytest_args}) ...", flush=True)
        done = run([venv / "bin" / "python", "-m", "pytest", "-p", "no:cacheprovider",
                    "-rfE", "--tb=no", *args.pytest_args.split()], cwd=REPO)
        tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
        failed = failures(done.stdout)
        print(f"tests: {tail[0]}")
        print("\n".join(failed[:60]))
        if len(failed) > 60:
            print(f"... and {len(failed) - 60} more")
        return 0 if done.returncode == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
