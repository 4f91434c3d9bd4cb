"""Build the Lambda deployment zip: the handler, the skysurvey package and Linux wheels.

    python scripts/build_lambda_package.py                 # build/lambda.zip for python3.12
    python scripts/build_lambda_package.py --python-version 3.11 --output build/l311.zip

Wheels come from PyPI for the Lambda platform (``--platform manylinux... --only-binary``), so
the build works on any machine. Runtime: python3.12 (Amazon Linux 2023, glibc 2.34), because
numpy >= 2.3 ships only manylinux_2_28 wheels that python3.11's Amazon Linux 2 (glibc 2.26)
cannot load. The versions are pinned in requirements-lambda.lock (installed with --no-deps), so
two builds hold the same packages. Tests, headers and caches are stripped to stay under
Lambda's 250 MB unzipped limit; a zip over 50 MB is uploaded through S3 by setup_aws.py.

Every module is then compiled to bytecode by the runtime's Python (``--runtime-python``, else
this interpreter when it is that version, else ``python3.12`` on PATH) as unchecked-hash
``.pyc`` files: Lambda's ``/var/task`` is read-only, so without them each cold start compiles
every source it imports (python3.12 on the unpacked zip: import 1.36 s without, 0.47 s with),
and the zip's fixed timestamps would invalidate timestamp-checked ones. Without the runtime's
Python the zip is built without bytecode, and the build says so.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

try:
    from skysurvey import cli
    from skysurvey.config import REPO_ROOT
except ModuleNotFoundError as exc:  # run outside the project's environment
    raise SystemExit(f"{exc}: run .venv/bin/python {' '.join(sys.argv)} (or `make install` "
                     "first)") from None

LOCK_FILE = REPO_ROOT / "requirements-lambda.lock"  # exact versions of the zip's packages
UNZIPPED_LIMIT = 262_144_000  # Lambda: function + layers, unzipped
DIRECT_UPLOAD_LIMIT = 50 * 2**20
STRIP_DIRS = {"tests", "test", "__pycache__", "include", "benchmarks"}
KEEP_DIRS = {"astropy/tests"}  # astropy imports its test runner at import time
STRIP_SUFFIXES = {".pyc", ".pyx", ".pxd", ".pxi", ".h", ".hpp", ".c", ".cpp", ".a"}
#: Optional pyarrow components the handler never loads (Arrow Flight RPC). Substrait must stay:
#: pyarrow.lib links it (the package test caught that).
STRIP_GLOBS = ("pyarrow/libarrow_flight.so*", "pyarrow/_flight*.so",
               "pyarrow/libarrow_python_flight.so*")


def locked_requirements(python_version: str, lock: Path = LOCK_FILE) -> list[str]:
    """The lock file's pins for the target Python (markers evaluated for it, not for the
    interpreter running the build, as pip would)."""
    from packaging.requirements import Requirement

    pins = []
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"python_version": python_version,
                                                      "python_full_version": python_version}):
            req.marker = None
            pins.append(str(req))
    return pins


def install_wheels(target: Path, python_version: str, lock: Path = LOCK_FILE,
                   cache: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", python_version,
           "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
           "--platform", "manylinux_2_17_x86_64", "--target", str(target),
           *locked_requirements(python_version, lock)]
    if cache:
        cmd += ["--cache-dir", str(cache)]
    subprocess.run(cmd, check=True)


def strip(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        keep = path.relative_to(root).as_posix() in KEEP_DIRS
        if path.is_dir() and path.name in STRIP_DIRS and not keep and "dist-info" not in str(path):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in STRIP_SUFFIXES:
            path.unlink()
    for pattern in STRIP_GLOBS:
        for path in root.glob(pattern):
            path.unlink()


def find_python(python_version: str, given: str | None = None) -> str | None:
    """An interpreter of *python_version* ("3.12"): *given*, else this one, else
    ``python3.12`` on PATH; each asked for its version (a pyenv shim may exist without the
    version behind it)."""
    if given is None and f"{sys.version_info.major}.{sys.version_info.minor}" == python_version:
        return sys.executable
    found = given or shutil.which(f"python{python_version}")
    if found is None:
        return None
    try:
        out = subprocess.run([found, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return found if out.returncode == 0 and out.stdout.strip() == python_version else None


def compile_bytecode(root: Path, python_version: str, python: str | None = None) -> str | None:
    """Compile every module under *root* with the runtime's Python (unchecked-hash ``.pyc``,
    used without looking at the source's timestamp); returns the interpreter, or None when
    there is none of that version here (the zip then has no bytecode)."""
    python = find_python(python_version, python)
    if python is None:
        return None
    # exit status 1 when some file does not compile (a package's template, say): those stay
    # sources, as before; everything else gets its .pyc
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                    "unchecked-hash", str(root)], check=False, stdout=subprocess.DEVNULL)
    return python


def add_code(root: Path) -> None:
    shutil.copy2(REPO_ROOT / "scripts" / "lambda_function.py", root / "lambda_function.py")
    shutil.copytree(REPO_ROOT / "src" / "skysurvey", root / "skysurvey",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)


def unzipped_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def make_zip(root: Path, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(path.relative_to(root).as_posix(), (2026, 1, 1, 0, 0, 0))
                info.external_attr = (0o755 if path.suffix == ".so" else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, path.read_bytes())


def _step(text: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:5.1f} s] {text}", file=sys.stderr, flush=True)


def build(output: Path, python_version: str = "3.12", work: Path | None = None,
          cache: Path | None = None, runtime_python: str | None = None) -> tuple[Path, int, int]:
    """Build the zip; returns ``(staging folder, unzipped bytes, zip bytes)``.

    Progress (one line per step, with the elapsed time) goes to stderr.
    """
    start = time.perf_counter()
    work = work or REPO_ROOT / "build" / f"lambda-{python_version}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _step(f"1/5 installing the pinned wheels of {LOCK_FILE.name} for python{python_version} "
          "(first run: ~200 MB download)", start)
    install_wheels(work, python_version, LOCK_FILE, cache)
    _step("2/5 stripping tests, headers and caches", start)
    strip(work)
    add_code(work)
    python = compile_bytecode(work, python_version, runtime_python)
    if python is None:
        _step(f"3/5 warning: no python{python_version} here to compile the modules: the zip has "
              "no bytecode, so every cold start compiles the sources (~0.8 s more); put "
              f"python{python_version} on PATH (or pass --runtime-python) and build again", start)
    else:
        _step(f"3/5 compiled the modules to bytecode with {python}", start)
    size = unzipped_size(work)
    _step(f"4/5 zipping {sum(1 for p in work.rglob('*') if p.is_file()):,} files "
          f"({size / 2**20:.0f} MB unzipped)", start)
    make_zip(work, output)
    _step(f"5/5 done: {output}", start)
    return work, size, output.stat().st_size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Build the Lambda deployment zip.",
                                     formatter_class=cli.HelpFormatter)
    parser.add_argument("--output", default=str(REPO_ROOT / "build" / "lambda.zip"),
                        help="where to write the zip (setup_aws.py --package takes it)")
    parser.add_argument("--python-version", default="3.12", help="Lambda runtime's Python")
    parser.add_argument("--runtime-python", metavar="PATH",
                        help="an interpreter of that version, to compile the modules to bytecode "
                             "(default: this one if it is that version, else python<version> on "
                             "PATH)")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _, size, zipped = build(Path(args.output), args.python_version,
                                runtime_python=args.runtime_python)
    except subprocess.CalledProcessError as exc:
        print(f"error: pip could not fetch the wheels ({exc})", file=sys.stderr)
        return 1
    print(f"{args.output}: {zipped / 2**20:.1f} MB zipped, {size / 2**20:.1f} MB unzipped "
          f"(limits: 50 MB direct upload, 250 MB unzipped)")
    if size > UNZIPPED_LIMIT:
        print("error: over Lambda's 250 MB unzipped limit: use the container image "
              "(lambda/Dockerfile)", file=sys.stderr)
        return 1
    if zipped > DIRECT_UPLOAD_LIMIT:
        print("note: over 50 MB, setup_aws.py uploads it through the catalog bucket")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
