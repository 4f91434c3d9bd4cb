"""The package's layers (DESIGN.md, "Shape"): no import goes up a layer or round a circle,
imports inside functions included; the store classes are told apart in storage.py only.

Imports are read with :mod:`ast` from the source of every module under ``src/skysurvey``
(nothing is imported), so a lazy ``from .queries import x`` inside a function counts as much
as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "skysurvey"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Lowest first. A module may import its own layer's modules (without a circle) and lower
#: layers'. ``synth`` (sky images with known truth) and ``synth_survey`` (which scores a built
#: catalog against that truth) are not in DESIGN's list: they stand with the science and the
#: presentation; ``prices`` (the AWS list prices that cost.py and athena.py share) is
#: foundation; ``cli`` (what every script's command line shares) is a front, with setup.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("errors", "config", "schema", "units", "geometry", "aws", "storage",
                    "prices")),
    ("per-image science", ("measurement", "profiles", "fitsread", "astrometry", "detect",
                           "deblend", "classify", "psf", "reference", "calibrate", "synth",
                           "forced", "forced_psf", "stamps", "psfmodel", "psffit", "psfphot")),
    ("orchestration", ("pipeline", "catalog", "runner", "lambda_backend", "upload")),
    ("catalog products", ("objects", "queries", "athena", "export", "hats_export", "forced_run",
                          "forced_objects", "forced_summary", "lightcurves", "lightcurve_fits",
                          "handler")),
    ("presentation", ("plots", "psfplots", "report", "cost", "synth_survey")),
    ("deployment", ("aws_resources", "aws_setup", "aws_cleanup", "cfn_template", "aws_check",
                    "cli", "steps")),
)
#: The store classes: only storage.py asks which one it has.
STORE_CLASSES = frozenset({"LocalStore", "S3Store"})


# ---------------------------------------------------------------------------------------
# The checker (pure functions of source text, so a planted module can be checked too)


def layer_index(module: str) -> int | None:
    """The layer of a dotted module name (a subpackage's modules take the subpackage's);
    None when undeclared. The package's own ``__init__`` (``__version__``) is foundation."""
    parts = module.split(".")
    if parts == [PACKAGE]:
        return 0
    for index, (_, names) in enumerate(LAYERS):
        if parts[1] in names:
            return index
    return None


def module_name(path: Path, root: Path = SOURCE) -> str:
    """``src/skysurvey/objects/unit.py`` -> ``skysurvey.objects.unit``."""
    rel = path.relative_to(root).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import's base (``from ..x import``)."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imported_modules(source: str, module: str, is_package: bool,
                     known: set[str]) -> list[tuple[str, int]]:
    """The package's modules that *source* (the module *module*) imports, with line numbers:
    every ``import`` and ``from ... import`` anywhere (functions, ``TYPE_CHECKING`` blocks).

    ``from PKG import name`` names the module ``PKG.name`` when it is one, else ``PKG``.
    Importing ``a.b.c`` also imports the packages ``a.b`` and ``a`` (their ``__init__``
    runs): those the importer is not itself inside of count as imported too.
    """
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]
        else:
            continue
        for name in names:
            if name != PACKAGE and not name.startswith(f"{PACKAGE}."):
                continue
            while name not in known and "." in name:  # an attribute, not a module
                name = name.rsplit(".", 1)[0]
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                target = ".".join(parts[:depth])
                inside = module == target or module.startswith(f"{target}.")
                if target != module and target in known and (depth == len(parts)
                                                              or not inside):
                    found.append((target, node.lineno))
    return sorted(set(found), key=lambda item: (item[1], item[0]))


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, list[tuple[str, int]]]:
    """``{module: [(imported module, line), ...]}`` of *sources* ``{module: (text, is
    package)}``."""
    known = set(sources) | {PACKAGE}
    return {m: imported_modules(text, m, pkg, known) for m, (text, pkg) in sources.items()}


def _layer_name(index: int | None) -> str:
    return "undeclared" if index is None else LAYERS[index][0]


def upward_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    """One line per import of a higher layer's module (or of an undeclared one)."""
    found = []
    for module, targets in sorted(graph.items()):
        here = layer_index(module)
        for target, line in targets:
            there = layer_index(target)
            if here is None or there is None or there > here:
                found.append(f"{module}:{line} ({_layer_name(here)}) imports {target} "
                             f"({_layer_name(there)})")
    return found


def circles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The import circles: strongly connected groups of two modules or more, and a module
    importing itself (Tarjan's algorithm)."""
    edges = {m: sorted({t for t, _ in targets}) for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1 or node in edges.get(node, []):
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def store_type_checks(source: str) -> list[int]:
    """Lines of ``isinstance(x, <a store class>)`` in *source*."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "isinstance" and len(node.args) == 2):
            named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if named & STORE_CLASSES:
                lines.append(node.lineno)
    return lines


def package_sources(root: Path = SOURCE) -> dict[str, tuple[str, bool]]:
    """Every module of the package: ``{dotted name: (source, is a package's __init__)}``."""
    return {module_name(p, root): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
            for p in sorted(root.rglob("*.py"))}


# ---------------------------------------------------------------------------------------
# The package as it is


@pytest.fixture(scope="module")
def graph():
    return import_graph(package_sources())


def test_every_module_has_a_layer():
    undeclared = sorted(m for m in package_sources() if layer_index(m) is None)
    assert not undeclared, f"add these modules to LAYERS: {undeclared}"


def test_no_import_goes_up_a_layer(graph):
    assert not upward_imports(graph), "\n".join(upward_imports(graph))


def test_no_import_goes_round_a_circle(graph):
    assert not circles(graph), circles(graph)


def test_the_checker_reads_the_package(graph):
    """Guards the checker itself: imports of every form are seen (a checker that reads none
    would pass the tests above)."""
    def targets(module):
        return {t for t, _ in graph[module]}

    assert "skysurvey.geometry" in targets("skysurvey.calibrate")  # from .geometry import
    assert {"skysurvey.objects.build", "skysurvey.objects.unit",  # from . import / from .x
            "skysurvey.queries"} <= targets("skysurvey.objects")  # from ..queries import
    assert "skysurvey.storage" in targets("skysurvey.hats_export")  # inside a function
    assert "skysurvey" in targets("skysurvey.synth")  # from skysurvey import __version__
    assert "skysurvey.objects" not in targets("skysurvey.objects.build")  # its own package


def test_only_storage_tells_the_store_classes_apart():
    found = {m: store_type_checks(text) for m, (text, _) in package_sources().items()}
    others = {m: lines for m, lines in found.items() if lines and m != "skysurvey.storage"}
    assert not others, f"isinstance on a store class outside storage.py: {others}"
    assert found["skysurvey.storage"], "the checker found none in storage.py either"


# ---------------------------------------------------------------------------------------
# The checker on planted modules


def _planted(modules: dict[str, str]) -> dict[str, list[tuple[str, int]]]:
    """The real package plus *modules* (``{dotted name: source}``), as one graph."""
    sources = package_sources()
    sources.update({m: (text, False) for m, text in modules.items()})
    return import_graph(sources)


@pytest.mark.parametrize(("source", "target"), [
    ("from .aws_setup import QUEUE_NAME\n", "skysurvey.aws_setup"),
    ("def queue():\n    from . import aws_setup\n\n    return aws_setup.QUEUE_NAME\n",
     "skysurvey.aws_setup"),
    ("import skysurvey.aws_setup\n", "skysurvey.aws_setup"),
    ("from .objects.unit import run_unit\n", "skysurvey.objects.unit"),
    ("from skysurvey.objects import build_objects\n", "skysurvey.objects"),
])
def test_a_planted_upward_import_is_flagged(source, target):
    """A foundation module (geometry.py, its source replaced) importing higher layers."""
    found = upward_imports(_planted({"skysurvey.geometry": source}))
    assert found and all(line.startswith("skysurvey.geometry:") for line in found), found
    assert any(f"(foundation) imports {target} " in line for line in found), found


def test_a_planted_undeclared_module_is_flagged():
    found = upward_imports(_planted({"skysurvey.newcomer": "from . import errors\n"}))
    assert found == ["skysurvey.newcomer:1 (undeclared) imports skysurvey.errors (foundation)"]


def test_a_planted_upward_import_from_foundation_is_flagged():
    graph = _planted({"skysurvey.geometry": "import numpy\n\ndef f():\n"
                                            "    from .calibrate import calibrate\n"})
    assert upward_imports(graph) == [
        "skysurvey.geometry:4 (foundation) imports skysurvey.calibrate (per-image science)"]


def test_a_planted_circle_is_flagged():
    graph = _planted({"skysurvey.objects.model": "from .build import build_objects\n"})
    assert any({"skysurvey.objects.model", "skysurvey.objects.build"} <= set(c)
               for c in circles(graph))


def test_a_planted_store_type_check_is_flagged():
    source = "def f(store):\n    return isinstance(store, storage.LocalStore)\n"
    assert store_type_checks(source) == [2]
    assert store_type_checks("isinstance(x, (int, S3Store))\n") == [1]
    assert store_type_checks("isinstance(x, dict)\n") == []



def test_every_module_declares_its_public_names():
    """``__all__`` in every module (a package's ``__init__`` may hand its modules' names on):
    what it lists exists, and every public function and class the module defines is listed."""
    import importlib

    for name, (source, _) in package_sources().items():
        if name == PACKAGE:
            continue
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name}: no __all__"
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names what it does not have: {missing}"
        defined = {node.name for node in ast.parse(source).body
                   if isinstance(node, ast.FunctionDef | ast.ClassDef)
                   and not node.name.startswith("_")}
        unlisted = sorted(defined - set(module.__all__))
        assert not unlisted, f"{name}: public but not in __all__: {unlisted}"


# ---------------------------------------------------------------------------------------
# Issue 26, item 5: measurement inputs as one object, SEP's settings in one place

#: SEP's process-wide setters: only measurement.sep_settings calls them (and restores them).
SEP_SETTERS = frozenset({"set_extract_pixstack", "set_sub_object_limit"})
#: The per-image measurement modules whose functions take at most MAX_PARAMETERS (their
#: pixels as one ``measurement.Pixels``, their tuning values as a config object).
#: psfphot and psfmodel join once their owners have converted them.
MEASUREMENT_MODULES = ("measurement", "profiles", "fitsread", "astrometry", "detect", "deblend",
                       "classify", "psf", "reference", "calibrate", "psfmodel", "psffit",
                       "psfphot", "forced", "forced_psf", "stamps")
MAX_PARAMETERS = 6


def sep_setter_calls(source: str) -> list[int]:
    """Lines of calls to SEP's process-wide setters (``sep.set_...(...)`` or a bare
    ``set_...(...)`` imported from sep) in *source*."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in SEP_SETTERS:
                lines.append(node.lineno)
    return lines


def long_signatures(source: str, limit: int = MAX_PARAMETERS) -> list[str]:
    """``name (n)`` of every function and method in *source* with more than *limit*
    parameters (positional and keyword-only, ``*args``/``**kwargs`` counted; ``self`` and
    ``cls`` not)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            if names and names[0] in ("self", "cls"):
                names = names[1:]
            n = len(names) + (args.vararg is not None) + (args.kwarg is not None)
            if n > limit:
                found.append(f"{node.name} ({n})")
    return found


def test_only_measurement_changes_sep_settings():
    found = {m: sep_setter_calls(text) for m, (text, _) in package_sources().items()}
    others = {m: lines for m, lines in found.items() if lines and m != "skysurvey.measurement"}
    assert not others, f"SEP's settings changed outside measurement.sep_settings: {others}"
    assert found["skysurvey.measurement"], "the checker found none in measurement.py either"


def test_a_planted_sep_setter_call_is_flagged():
    assert sep_setter_calls("import sep\nsep.set_extract_pixstack(10**6)\n") == [2]
    assert sep_setter_calls("from sep import set_sub_object_limit\n"
                            "def f():\n    set_sub_object_limit(4096)\n") == [3]
    assert sep_setter_calls("sep.get_extract_pixstack()\n") == []


@pytest.mark.parametrize("module", MEASUREMENT_MODULES)
def test_measurement_functions_take_at_most_six_parameters(module):
    source = (SOURCE / f"{module}.py").read_text(encoding="utf-8")
    assert not long_signatures(source), (
        f"{module}: more than {MAX_PARAMETERS} parameters (pass measurement.Pixels, a config "
        f"object): {long_signatures(source)}")


def test_a_planted_long_signature_is_flagged():
    source = ("def f(sub, rms, segmap, mask, x, y, *, gain=None):\n    pass\n"
              "class C:\n    def m(self, a, b, c, d, e, f):\n        pass\n"
              "def g(a, *args, **kwargs):\n    pass\n")
    assert long_signatures(source) == ["f (7)"]


#: Issue 26: no module over this many lines (split by concept instead).
MAX_MODULE_LINES = 800


def test_no_module_is_over_800_lines():
    long = {module_name(p): n for p in sorted(SOURCE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) >= MAX_MODULE_LINES}
    assert not long, f"modules of {MAX_MODULE_LINES} lines or more (split them): {long}"
