"""The command line behaves: --version everywhere, help without doubled defaults, quiet broken
pipes, a one-line hint outside the venv; and the packaging: pyproject.toml declares what
requirements.txt installs, the Lambda zip's versions are pinned."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import draw_fits, load_script
from packaging.requirements import Requirement

from skysurvey import __version__
from skysurvey.config import REPO_ROOT

#: Scripts whose command line has been brought to the shared conventions (skysurvey.cli).
SCRIPTS = ["build_lambda_package", "build_objects", "check_aws", "cleanup_aws",
           "download_sample_fits", "estimate_cost", "export_hats", "forced_photometry",
           "invoke_lambda", "lambda_function", "plot_catalog", "query_with_athena", "setup_aws",
           "upload_to_s3"]


def test_every_script_is_covered():
    assert sorted(p.stem for p in (REPO_ROOT / "scripts").glob("[!_]*.py")) == SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_version_and_help_without_doubled_defaults(name, capsys, monkeypatch):
    script = load_script(name)
    # argparse names the program after sys.argv[0], which is the runner's own under pytest
    monkeypatch.setattr(sys, "argv", [str(REPO_ROOT / "scripts" / f"{name}.py")])
    with pytest.raises(SystemExit) as info:
        script.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"{name}.py (skysurvey {__version__})"
    parser = script.build_parser()
    parser.prog = f"{name}.py"
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, (name, action.option_strings, "has no help")
    text = re.sub(r"\s+", " ", parser.format_help())
    assert "(default: None)" not in text and "(default: False)" not in text
    for chunk in re.split(r" (?=--?[a-z])", text):  # one option's help at a time
        assert chunk.count("(default") <= 1, (name, chunk)


def test_help_states_real_defaults_once():
    parser = load_script("query_with_athena").build_parser()
    text = re.sub(r"\s+", " ", parser.format_help())
    assert "(default: BUCKET_CATALOG)" in text and "(default: duckdb)" in text
    assert "duckdb: local SQL" in text  # --engine says what the engines are


def test_lambda_function_help_says_what_it_is_and_runs_one_event(tmp_path, capsys):
    out = subprocess.run([sys.executable, "scripts/lambda_function.py", "--help"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "lambda_function.lambda_handler" in out.stdout
    assert "Events it accepts" in out.stdout and "--event" in out.stdout
    draw_fits(tmp_path / "x.fits", size=64, n_stars=3)
    handler = load_script("lambda_function")
    event = f'{{"bucket": "{tmp_path}", "key": "x.fits", "catalog_bucket": "{tmp_path}/cat"}}'
    assert handler.main(["--event", event]) == 0
    assert '"status": "ok"' in capsys.readouterr().out


def test_piping_into_head_exits_quietly(tmp_path):
    from skysurvey.pipeline import catalog_image
    from skysurvey.storage import open_store

    draw_fits(tmp_path / "a.fits", size=64, n_stars=3)
    assert catalog_image(open_store(tmp_path), "a.fits",
                         open_store(tmp_path / "cat"))["status"] == "ok"
    command = (f"{sys.executable} scripts/query_with_athena.py --catalog {tmp_path / 'cat'} "
               "--sql 'SELECT * FROM range(200000)' | head -n 2")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.stderr == "" and out.returncode == 0
    assert len(out.stdout.splitlines()) == 2


@pytest.mark.parametrize("name", SCRIPTS)
def test_outside_the_venv_a_one_line_hint(name):
    """`python -S` has no site-packages: as a system Python without the project installed."""
    out = subprocess.run([sys.executable, "-S", f"scripts/{name}.py", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "No module named" in out.stderr and ".venv/bin/python" in out.stderr
    assert "make install" in out.stderr


def _names(lines) -> dict[str, str]:
    reqs = [Requirement(line) for line in lines]
    return {r.name.lower().replace("_", "-"): str(r.specifier) for r in reqs}


def test_pyproject_declares_what_requirements_txt_installs():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    declared = list(project["project"]["dependencies"])
    for group in project["dependency-groups"].values():
        declared += [g for g in group if isinstance(g, str)]
    lines = [line.split("#", 1)[0].strip()
             for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    installed = [line for line in lines if line and not line.startswith("-")]
    assert "-e ." in lines  # and this package itself
    assert _names(declared) == _names(installed)
    assert {"test", "dev"} <= set(project["dependency-groups"])
    assert "jupyterlab" in str(project["project"]["optional-dependencies"]["notebook"])


def test_lambda_lock_pins_every_package_within_its_range():
    builder = load_script("build_lambda_package")
    wanted = {Requirement(line).name.lower().replace("_", "-"): Requirement(line).specifier
              for line in (REPO_ROOT / "requirements-lambda.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    for target in ("3.12", "3.11"):
        pins = {Requirement(p).name.lower().replace("_", "-"): Requirement(p)
                for p in builder.locked_requirements(target)}
        assert all(str(r.specifier).startswith("==") for r in pins.values()), pins
        for name, spec in wanted.items():
            version = str(pins[name].specifier).removeprefix("==")
            assert spec.contains(version), (target, name, version, spec)
        assert {"pyerfa", "astropy-iers-data", "pyyaml", "packaging"} <= set(pins)
    numpy = {t: next(p for p in builder.locked_requirements(t) if p.startswith("numpy"))
             for t in ("3.12", "3.11")}
    assert numpy["3.12"] != numpy["3.11"]  # markers read for the target, not the builder's Python


def test_sample_generation_shows_progress(tmp_path, capsys):
    script = load_script("download_sample_fits")
    assert script.main(["--output-dir", str(tmp_path), "--count", "2", "--size", "96"]) == 0
    err = capsys.readouterr().err
    assert "[1/2] sky_g_001.fits" in err and "[2/2] sky_r_002.fits" in err


def test_benchmarks_write_to_data_output_unless_asked_to_update_results():
    import importlib.util

    from skysurvey.config import OUTPUT_DIR

    spec = importlib.util.spec_from_file_location("bench_run",
                                                  REPO_ROOT / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.results_path(False) == OUTPUT_DIR / "benchmark_results.md"
    assert bench.results_path(True) == REPO_ROOT / "benchmarks" / "RESULTS.md"
    assert "--update-results" in (REPO_ROOT / "benchmarks" / "README.md").read_text()


def test_benchmark_results_keep_the_sections_a_run_did_not_measure():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_run",
                                                  REPO_ROOT / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    old = ("# Benchmark results\n\nMachine: old\n\n## A\n\n| a |\n\n## Burst (other script)"
           "\n\nCommand: x\n\n| b |\n\n## C\n\n| c |\n")
    merged = bench.merge_sections(old, {"A": "| new a |", "D": "| d |"}, ["# Benchmark results\n"])
    assert merged == ("# Benchmark results\n\n## A\n\n| new a |\n\n## Burst (other script)\n\n"
                      "Command: x\n\n| b |\n\n## C\n\n| c |\n\n## D\n\n| d |\n")
    assert bench.merge_sections("", {"A": "| a |"}, ["# H\n"]) == "# H\n\n## A\n\n| a |\n"


def test_one_command_runs_every_step_the_scripts_run():
    """`skysurvey <step>` (pyproject's console script) and scripts/<module>.py are one step."""
    from skysurvey.steps import STEPS

    exe = Path(sys.executable).with_name("skysurvey")
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0
    listed = [line.split()[0] for line in help_text.stdout.splitlines()
              if line.startswith("  ")]
    assert listed == list(STEPS)
    assert {m for m, _ in STEPS.values()} <= set(SCRIPTS)
    same = [[exe, "query", "--list"], [sys.executable, "scripts/query_with_athena.py", "--list"]]
    outs = [subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
            for cmd in same]
    assert outs[0].returncode == outs[1].returncode == 0
    assert outs[0].stdout == outs[1].stdout and "cone" in outs[0].stdout
    version = subprocess.run([exe, "query", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"skysurvey query (skysurvey {__version__})"
    wrong = subprocess.run([exe, "quer"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "unknown step 'quer'" in wrong.stderr


def test_the_one_command_leaves_the_callers_argv_alone(capsys, monkeypatch):
    from skysurvey import steps

    monkeypatch.setattr(sys, "argv", ["caller", "--flag"])
    assert steps.main(["query", "--list"]) == 0
    assert sys.argv == ["caller", "--flag"] and "cone" in capsys.readouterr().out
