"""The Lambda artifact: within limits, loadable on the runtime's glibc, handler imports clean."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import load_script

from skysurvey.config import REPO_ROOT

pytestmark = pytest.mark.slow
RUNTIME_GLIBC = (2, 34)  # python3.12 runs on Amazon Linux 2023


def _builder():
    module = load_script("build_lambda_package")
    return module


def _glibc_ok(tag: str) -> bool:
    if tag.endswith("-any") or "none-any" in tag:
        return True
    m = re.search(r"manylinux_(\d+)_(\d+)", tag)
    if m:
        return (int(m[1]), int(m[2])) <= RUNTIME_GLIBC
    return bool(re.search(r"manylinux(1|2010|2014)_", tag))


def _python312(builder) -> str | None:
    """A python3.12 on this machine, if any: on PATH, or one of pyenv's versions (whose shim
    on PATH answers only when that version is selected)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in [None, *sorted(map(str, root.glob("versions/3.12*/bin/python3.12")))]:
        found = builder.find_python("3.12", candidate)
        if found:
            return found
    return None


def _run_handler(python: str, unpacked: Path, tmp_path: Path) -> dict:
    """The handler imported from *unpacked* with nothing else on the path, run on one image."""
    from conftest import draw_fits

    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    draw_fits(raw / "x.fits")
    code = ("import json, lambda_function, sys; "
            "r = lambda_function.lambda_handler({'bucket': sys.argv[1], 'key': 'x.fits', "
            "'catalog_bucket': sys.argv[2]}); print(json.dumps(r))")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(unpacked), "HOME": str(tmp_path)}
    # -I would drop PYTHONPATH; -S -s keep site-packages (and the venv) out instead
    out = subprocess.run([python, "-S", "-s", "-c", code, str(raw), str(tmp_path / "cat")],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_package_for_python312_is_within_limits_and_glibc_compatible(tmp_path):
    builder = _builder()
    python312 = _python312(builder)
    work, unzipped, zipped = builder.build(tmp_path / "lambda.zip", "3.12", tmp_path / "stage",
                                           REPO_ROOT / "build" / "pip-cache", python312)
    assert unzipped < builder.UNZIPPED_LIMIT
    print(f"\nlambda.zip: {zipped / 2**20:.1f} MB zipped, {unzipped / 2**20:.1f} MB unzipped")
    tags = []
    for wheel in work.glob("*.dist-info/WHEEL"):
        tags += [line.split(": ", 1)[1] for line in wheel.read_text().splitlines()
                 if line.startswith("Tag: ")]
    assert tags and all(_glibc_ok(t) for t in tags), tags
    assert any("cp312" in t for t in tags)
    names = zipfile.ZipFile(tmp_path / "lambda.zip").namelist()
    assert "lambda_function.py" in names and "skysurvey/pipeline.py" in names
    assert not any("/tests/" in n and not n.startswith("astropy/tests/") for n in names)
    # bytecode from python3.12 when there is one here (the build says so when there is none)
    pycs = [n for n in names if n.endswith(".pyc")]
    if python312 is None:
        assert pycs == []
        return
    assert "skysurvey/__pycache__/pipeline.cpython-312.pyc" in names
    assert all(".cpython-312." in n for n in pycs)
    # and the runtime's Python runs the handler from it
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(tmp_path / "lambda.zip").extractall(unpacked)
    reply = _run_handler(python312, unpacked, tmp_path)
    assert reply["status"] == "ok" and reply["n_sources"] >= 10


def _pyc_flags(path) -> int:
    """The flags word of a .pyc (PEP 552): 0b01 hash-based, 0b11 hash-based and checked."""
    return int.from_bytes(path.read_bytes()[4:8], "little")


def test_handler_imports_and_runs_from_the_unpacked_artifact(tmp_path):
    """Built for this interpreter's Python, unpacked, imported with nothing else on the path."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    builder = _builder()
    builder.build(tmp_path / "local.zip", version, tmp_path / "stage",
                  REPO_ROOT / "build" / "pip-cache")
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(tmp_path / "local.zip").extractall(unpacked)
    # every module compiled by this Python, unchecked-hash: /var/task is read-only, so without
    # them a cold start compiles each source it imports (and the zip's fixed timestamps would
    # invalidate timestamp-checked ones)
    for module in ("lambda_function", "skysurvey/handler", "skysurvey/detect", "numpy/__init__",
                   "astropy/wcs/wcs"):
        pyc = Path(importlib.util.cache_from_source(str(unpacked / f"{module}.py")))
        assert pyc.is_file() and _pyc_flags(pyc) == 0b01, pyc
    # and they are what runs: a source changed after the build is not looked at
    handler = unpacked / "skysurvey" / "handler.py"
    handler.write_text(handler.read_text() + "\nraise RuntimeError('compiled from source')\n")
    reply = _run_handler(sys.executable, unpacked, tmp_path)
    assert reply["status"] == "ok" and reply["n_sources"] >= 10
