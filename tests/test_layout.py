"""The code's layout holds: layers import one way, no cycles, and the public API is what the README says.

Rule: models <- io <- builder <- {training, inference} <- detection <- cli, with the helpers
(``_utils``, ``_version``) below everything and ``fasternet.layers`` below the models. Every
import counts, function-level ones too.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fasternet
from conftest import REPO

SOURCE = REPO / "src" / "fasternet"
README = REPO / "README.md"

# Lower ranks are imported by higher ones, never the other way. Same-rank groups do not import each other.
RANKS = {
    "fasternet._version": 0,
    "fasternet._utils": 0,
    "fasternet.layers": 1,
    "fasternet.models": 2,
    "fasternet.io": 3,
    "fasternet.builder": 4,
    "fasternet.training": 5,
    "fasternet.inference": 5,
    "fasternet.detection": 6,
    "fasternet.cli": 7,
    "fasternet.__main__": 8,
    "fasternet": 8,  # the package's __init__: the public API
}
# Function-level imports of the package's own modules hide the real graph; these are the exceptions.
LAZY_OK = {
    "fasternet.cli": "torchvision is optional: the detection commands import fasternet.detection when run",
    "fasternet.inference.kernels.block": "the Triton kernel module imports triton, which CPU machines lack",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SOURCE.rglob("*.py")}


def _group(module: str) -> str:
    return max((key for key in RANKS if module == key or module.startswith(key + ".")), key=len)


def _imports(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported fasternet module, line, inside a function) for every import in a file."""
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(sub) for f in functions for sub in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from fasternet.x import y": y may be a submodule
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        for name in names:
            if name == "fasternet" or name.startswith("fasternet."):
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.append((name, node.lineno, id(node) in nested))
    return list(dict.fromkeys(found))


def test_every_module_has_a_rank():
    for module in _modules():
        assert _group(module) in RANKS, module


def test_no_layer_imports_upward_or_sideways():
    modules = _modules()
    problems = []
    for module, path in modules.items():
        source_group = _group(module)
        for target, line, _ in _imports(path, set(modules)):
            target_group = _group(target)
            if target_group != source_group and RANKS[target_group] >= RANKS[source_group]:
                problems.append(f"{path.relative_to(REPO)}:{line}: {module} ({source_group}) imports {target}")
    assert not problems, "\n".join(problems)


def test_the_module_graph_has_no_cycle():
    modules = _modules()
    graph = {m: {t for t, _, _ in _imports(p, set(modules)) if t != m} for m, p in modules.items()}
    # A package's __init__ importing its own submodules is how packages re-export; the reverse is a cycle.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if target.startswith(node + "."):  # a package re-exporting its submodule
                continue
            if state.get(target) == 1:
                cycle.extend(trail[trail.index(target) :] + [target] if target in trail else [node, target])
                return True
            if state.get(target) is None and visit(target, [*trail, target]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if state.get(module) is None and visit(module, [module]):
            break
    assert not cycle, " -> ".join(cycle)


def test_function_level_imports_of_our_own_modules_are_the_listed_exceptions():
    modules = _modules()
    lazy = []
    for module, path in modules.items():
        for target, line, nested in _imports(path, set(modules)):
            if nested and not any(module == k or module.startswith(k + ".") for k in LAZY_OK):
                lazy.append(f"{path.relative_to(REPO)}:{line} imports {target} inside a function")
    assert not lazy, "\n".join(lazy)


def _public_functions() -> dict[str, object]:
    return {
        name: getattr(fasternet, name) for name in fasternet.__all__ if inspect.isfunction(getattr(fasternet, name))
    }


def test_no_module_shares_its_name_with_a_public_function():
    functions = _public_functions()
    assert {"deploy", "export", "profile", "quantize", "runner", "train", "predict", "create_model"} <= set(functions)
    clashes = [m for m in _modules() if m.rsplit(".", 1)[-1] in functions]
    assert not clashes, clashes


def test_public_functions_stay_functions_whatever_was_imported_before():
    for info in pkgutil.walk_packages(fasternet.__path__, "fasternet."):
        if info.name.startswith(("fasternet.detection", "fasternet.inference.kernels.triton", "fasternet.__main__")):
            continue  # need torchvision / triton, or run the command; their names cannot clash (checked above)
        importlib.import_module(info.name)
    for name, function in _public_functions().items():
        assert getattr(fasternet, name) is function and inspect.isfunction(getattr(fasternet, name)), name


def test_all_names_exist_with_a_one_line_summary():
    for name in fasternet.__all__:
        assert hasattr(fasternet, name), name
        if name.startswith("__") or name.isupper():
            continue
        doc = inspect.getdoc(getattr(fasternet, name))
        assert doc and doc.splitlines()[0].strip(), f"fasternet.{name} has no docstring"
        assert len(doc.splitlines()[0]) <= 120, f"fasternet.{name}: the first docstring line is not a one-line summary"


def test_help_shows_the_whole_public_api():
    result = subprocess.run(
        [sys.executable, "-c", "import fasternet; help(fasternet)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PAGER": "cat", "MANPAGER": "cat"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    missing = [name for name in fasternet.__all__ if not name.startswith("__") and name not in result.stdout]
    assert not missing, missing


def _resolve(dotted: str) -> object:
    """The object a dotted name like ``fasternet.inference.runners.BACKENDS`` refers to."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            value = getattr(value, part)
        return value
    raise ImportError(dotted)


def test_every_name_the_readme_calls_exists_and_is_the_documented_object():
    text = README.read_text()
    dotted = {
        name
        for name in re.findall(r"(?<![\w./])fasternet(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text)
        if not name.endswith(".py")  # a file name (models/fasternet.py), not a Python name
    }
    first = {name.split(".")[1] for name in dotted}
    assert {"runner", "deploy", "export", "quantize", "create_model", "train"} <= first
    functions = _public_functions()
    for name in sorted(dotted):
        if name.startswith("fasternet.detection") and importlib.util.find_spec("torchvision") is None:
            continue
        try:
            value = _resolve(name)
        except (ImportError, AttributeError) as error:
            pytest.fail(f"the README names {name}, which does not exist: {error!r}")
        short = name.removeprefix("fasternet.")
        if short in functions:
            assert inspect.isfunction(value), f"{name} is not the function"


def test_the_readme_layout_section_names_every_package_and_the_rule():
    text = README.read_text()
    section = text[text.index("## Layout of the code") :]
    for group in ("layers", "models/", "io/", "builder", "training/", "inference/", "detection/", "cli/", "_utils"):
        assert group in section, group
    assert "models <- io <- builder" in section
