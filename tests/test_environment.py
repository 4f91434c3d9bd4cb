"""The environment is the locked one: `.venv` holds exactly requirements.lock, the lock covers
requirements.txt, and the Lambda zip's pins agree with the development pins."""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_cli import REPO_ROOT, load_script

LOCK = REPO_ROOT / "requirements.lock"
LAMBDA_LOCK = REPO_ROOT / "requirements-lambda.lock"
# In .venv but not the lock's business: the project itself, and the setuptools that Python 3.11's
# venv module puts in every new environment (nothing imports it; 3.12+ venvs have none).
NOT_LOCKED = {"skysurvey", "setuptools"}
# Packages both locks hold at different versions on purpose, with the reason (none today:
# `make lock` resolves with the Lambda lock as constraints).
LAMBDA_DIFFERENCES: dict[str, str] = {}


def _pins(lock: Path, python: str) -> dict[str, str]:
    builder = load_script("build_lambda_package")
    reqs = [Requirement(line) for line in builder.locked_requirements(python, lock)]
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in reqs}


def _python() -> str:
    return "{}.{}.{}".format(*sys.version_info[:3])


def test_every_requirement_is_locked_exactly():
    locked = _pins(LOCK, _python())
    assert all(v and not v.startswith(("<", ">", "~", "!")) for v in locked.values()), locked
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name in locked, f"{name} is in requirements.txt but not locked: make lock"
            assert req.specifier.contains(locked[name]), (name, locked[name], req.specifier)


@pytest.mark.skipif(Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve(),
                    reason="checks the project's .venv; this run uses another environment")
def test_the_venv_holds_exactly_the_lock():
    locked = _pins(LOCK, _python())
    installed = {canonicalize_name(d.metadata["Name"]): d.version
                 for d in metadata.distributions(path=sys.path)}
    installed = {n: v for n, v in installed.items() if n not in NOT_LOCKED}
    wrong = {n: (v, locked.get(n, "not in the lock")) for n, v in installed.items()
             if locked.get(n) != v}
    missing = sorted(set(locked) - set(installed))
    assert not wrong and not missing, (
        f".venv differs from requirements.lock (installed, locked): {wrong}; missing: "
        f"{missing}. Repair: rm -rf .venv && make install")


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_the_lambda_lock_and_the_dev_lock_agree(python):
    dev, zip_ = _pins(LOCK, python), _pins(LAMBDA_LOCK, python)
    differ = {n: (zip_[n], dev[n]) for n in set(dev) & set(zip_)
              if zip_[n] != dev[n] and n not in LAMBDA_DIFFERENCES}
    assert not differ, f"Lambda lock vs requirements.lock (zip, dev) on Python {python}: {differ}"
    assert {"numpy", "astropy", "sep", "pyarrow", "astropy-healpix"} <= set(zip_) & set(dev)


def test_upgrade_check_reports_moves_and_lifts_bounds():
    spec = importlib.util.spec_from_file_location("upgrade_check",
                                                  REPO_ROOT / "tools" / "upgrade_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    old = check.pins("boto3==1.44.13\nnumpy==2.4.6 ; python_full_version < '3.12'\nsix==1\n")
    new = check.pins("boto3==1.44.18\nnumpy==2.4.6 ; python_full_version < '3.12'\nuv==0.1\n")
    assert check.moves(old, new) == ["  boto3: 1.44.13 -> 1.44.18", "  six: 1 -> (absent)",
                                     "  uv: (absent) -> 0.1"]
    lifted = check.without_upper_bounds("# c\nboto3>=1.34,<2\nbotocore<1.44.14\n"
                                        "moto[s3,server]>=5.0.10,<6\nlsdb==0.11.1\n-e .\n")
    assert lifted.splitlines() == ["# c", "boto3>=1.34", "botocore", "moto[s3,server]>=5.0.10",
                                   "lsdb", "-e ."]
    assert check.failures("x\nFAILED tests/a.py::t - boom\nERROR tests/b.py\nok\n") == [
        "FAILED tests/a.py::t - boom", "ERROR tests/b.py"]
