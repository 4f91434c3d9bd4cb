"""The guides say what the code does: the README's first block, the flags table."""

from __future__ import annotations

import re

from skysurvey.config import REPO_ROOT
from skysurvey.detect import FLAG_DESCRIPTIONS


def test_readme_starts_with_the_two_commands():
    text = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_flags_table_matches_the_code():
    text = (REPO_ROOT / "data" / "README.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (.+?) \|$", text, re.M)
    documented = {int(value): meaning for _, value, meaning in rows}
    assert documented == {int(k): v for k, v in FLAG_DESCRIPTIONS.items()}
    assert all(int(bit) == int(value).bit_length() - 1 for bit, value, _ in rows)


def test_readme_cost_table_is_the_cost_modules_breakdown():
    from skysurvey.cost import breakdown, estimate

    text = (REPO_ROOT / "README.md").read_text()
    tutorial = {"mb_per_image": 16.8, "seconds_per_image": 0.31, "memory_mb": 1024,
                "queries": 10}
    rows = breakdown(6, **tutorial)
    for service, quantity, usd in rows:
        assert f"| {service} | {quantity} | ${usd:.6f} |" in text, service
    total = estimate(6, **tutorial).total_usd
    assert abs(sum(r[2] for r in rows) - total) < 1e-12
    assert f"| **total** | | **${total:.6f}** |" in text
    assert "$7-10" in text
    services = {r[0].split()[0] for r in rows}
    assert {"S3", "Lambda", "Athena", "CloudWatch", "Data"} <= services


def test_readme_and_quickstart_say_what_the_demo_does():
    readme = (REPO_ROOT / "README.md").read_text()
    steps = re.findall(r"^\| (\d) \| `(\w+\.py)` \|", readme, re.M)
    makefile = (REPO_ROOT / "Makefile").read_text()
    demo = makefile.split("demo:")[1].split("\ntest:")[0]
    ran = set(re.findall(r"scripts/(\w+\.py)", demo)) | {"lambda_function.py"}
    assert [int(n) for n, _ in steps] == list(range(1, len(ran) + 1))
    assert {script for _, script in steps} == ran  # the table lists what make demo runs
    assert ("five steps" not in readme and "six steps" not in readme
            and "seven steps" not in readme and "eight steps" in readme)
    assert "data/output/report.html" in readme and "data/output/queries/" in readme
    assert "jupyter lab" in readme and "jupyter execute" in readme and "120 MB" in readme
    for section in ("## Prerequisites", "## What it costs", "## Troubleshooting",
                    "## Next steps", "## Outputs astronomers open"):
        assert section in readme, section
    assert "report.html" in demo


def test_quickstart_has_checklist_issues_timeline_disk_and_trigger():
    text = (REPO_ROOT / "QUICKSTART.md").read_text()
    for heading in ("### Expected timeline", "### Verification checklist", "### Common issues"):
        assert heading in text, heading
    assert "1.5 GB" in text and "1.2 GB" in text and "310 MB" in text  # disk: not "about 1 GB"
    assert "--trigger" in text and "--only-new" in text
    assert "five steps" not in text


def test_cleanup_guide_says_how_to_confirm_nothing_bills():
    text = (REPO_ROOT / "cleanup_guide.md").read_text()
    section = text.split("## Cost monitoring after teardown", 1)[1]
    for command in ("aws resourcegroupstaggingapi get-resources", "aws ce get-cost-and-usage",
                    "aws budgets create-budget"):
        assert command in section, command  # test_guides checks each is a real operation
    assert "Cost Explorer" in section and "skysurvey:deployment=" in section


def test_data_readme_has_sources_limits_cleanup_and_every_truth_column():
    from skysurvey.synth import make_image

    text = (REPO_ROOT / "data" / "README.md").read_text()
    for heading in ("## Data sources", "## Storage limits", "## Cleaning up locally"):
        assert heading in text, heading
    truth = make_image((64, 64), n_stars=3, n_galaxies=2, seed=1).truth
    table = text.split("list every injected source", 1)[1].split("**Zero points", 1)[0]
    for column in truth.columns:  # source_id, kind, x, y, ..., snr, r_eff, sersic_n, ellipticity
        assert f"`{column}`" in table, column


# ---------------------------------------------------------------------------------------
# numpydoc on what the notebook and the workflow steps call (issue 26, item 6): every
# discovered function has its Parameters (when it takes any) and Returns sections


def _front_sources():
    """``(where, source, package)`` of the notebook's code cells (IPython magics and shell
    lines left out) and of every ``steps/*.py`` module (*package*: what their relative
    imports are relative to)."""
    import json

    notebook = json.loads((REPO_ROOT / "notebooks" / "sky_analysis.ipynb").read_text())
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            lines = "".join(cell["source"]).splitlines()
            code = "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))
            yield f"notebook cell {i}", code, None
    for path in sorted((REPO_ROOT / "src" / "skysurvey" / "steps").glob("*.py")):
        yield f"steps/{path.name}", path.read_text(), "skysurvey.steps"


def called_package_functions() -> dict[str, set[str]]:
    """``{module.function: {where, ...}}``: the package's public functions that the notebook
    and the steps import by name (``from skysurvey.x import f``) or call through a module
    (``from skysurvey import x; x.f(...)``), keyed by the module that defines them."""
    import ast
    import importlib
    import inspect

    used: dict[tuple[str, str], set[str]] = {}
    for where, code, package in _front_sources():
        tree = ast.parse(code)
        modules: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[:len(parts) - node.level + 1], *filter(None, [base])])
                if base != "skysurvey" and not base.startswith("skysurvey."):
                    continue
                for alias in node.names:
                    try:
                        importlib.import_module(f"{base}.{alias.name}")
                        modules[alias.asname or alias.name] = f"{base}.{alias.name}"
                    except ImportError:  # a name, not a module
                        used.setdefault((base, alias.name), set()).add(where)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("skysurvey"):
                        modules[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules):
                used.setdefault((modules[node.value.id], node.attr), set()).add(where)
    found: dict[str, set[str]] = {}
    for (module, name), where in used.items():
        obj = getattr(importlib.import_module(module), name, None)
        if inspect.isfunction(obj) and not name.startswith("_"):
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", set()).update(where)
    return found


def missing_sections(function) -> list[str]:
    """The numpydoc sections *function*'s docstring lacks: ``Parameters`` when it takes any
    (``self``/``cls`` aside), ``Returns`` (or ``Yields``) always."""
    import inspect

    doc = inspect.getdoc(function) or ""
    params = [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]
    missing = []
    if params and "Parameters\n----------" not in doc:
        missing.append("Parameters")
    if "Returns\n-------" not in doc and "Yields\n------" not in doc:
        missing.append("Returns")
    return missing


def test_what_the_notebook_and_steps_call_has_numpydoc_sections():
    import importlib

    called = called_package_functions()
    assert "skysurvey.detect.measure_image" in called  # the discovery reads the notebook
    assert "skysurvey.runner.run_local" in called  # ... and the steps
    lacking = {}
    for qualified in sorted(called):
        module, name = qualified.rsplit(".", 1)
        missing = missing_sections(getattr(importlib.import_module(module), name))
        if missing:
            lacking[qualified] = f"{', '.join(missing)} (called in {sorted(called[qualified])})"
    assert not lacking, "numpydoc sections missing:\n" + "\n".join(
        f"{k}: {v}" for k, v in lacking.items())


def test_a_function_without_sections_is_found():
    def documented(a, b=1):
        """Sum.

        Parameters
        ----------
        a, b : int

        Returns
        -------
        int
        """

    def bare(a):
        """Sum."""

    def nothing():
        """Nothing.

        Returns
        -------
        None
        """

    assert missing_sections(documented) == []
    assert missing_sections(bare) == ["Parameters", "Returns"]
    assert missing_sections(nothing) == []
