"""The packages of docs/architecture.md: moved modules keep their old names for one release."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import ncslim

SRC = Path(ncslim.__file__).parent

MOVED = {  # old name: (where it went, one of its names)
    "regular": ("util.regular", "read_text"), "escape": ("util.escape", "shown"),
    "liverun": ("util.liverun", "run_lock"), "distributed": ("util.distributed", "is_main"),
    "progress": ("util.progress", "RunProgress"),
    "figures": ("report.figures", "plan"), "rundata": ("report.rundata", "run_curves"),
    "summary": ("report.summary", "format_results"),
    "tensorboard_log": ("report.tensorboard_log", "TensorBoardLog"),
    "metrics": ("models.measure", "count_flops"), "export": ("models.export", "export_model"),
    "modelrecord": ("models.record", "check_trained_on"), "io": ("models.files", "load_model"),
    "pruning": ("prune", "prune_model"), "selection": ("prune.selection", "select_channels"),
    "generic": ("prune.generic", "prune_generic"), "costs": ("prune.costs", "channel_costs"),
    "penalty_base": ("sparsity.penalty_base", "Penalty"),
    "penalties": ("sparsity.penalties", "make_penalty"),
    "penalty_registry": ("sparsity.penalty_registry", "resolve_params"),
    "regularizer": ("sparsity.regularizer", "SparsityRegularizer"),
    "controller": ("sparsity.controller", "LambdaController"),
    "vcp": ("sparsity.vcp", "VariationalScales"),
    "diverged": ("run.diverged", "set_aside"), "pipeline": ("run.pipeline", "run"),
    "baselines": ("run.baselines", "run_tp_baseline"), "device": ("run.device", "resolve_device"),
    "methods": ("run.methods", "make_method")}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_reaches_the_moved_module(old):
    new, name = MOVED[old]
    alias = importlib.import_module(f"ncslim.{old}")
    moved = importlib.import_module(f"ncslim.{new}")
    assert getattr(alias, name) is getattr(moved, name)
    with pytest.raises(AttributeError):
        alias.no_such_name  # noqa: B018


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """module -> the modules of the package at ``root`` it imports (lazy imports included)."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (isinstance(node, ast.ImportFrom)
                  and (node.module or "").split(".")[0] == root.name):
                target = node.module.partition(".")[2]
            elif isinstance(node, ast.Import):
                deps |= {a.name.partition(".")[2] for a in node.names
                         if a.name.startswith(f"{root.name}.")}
                continue
            else:
                continue
            for alias in node.names:  # `from . import io` imports the module io
                sub = f"{target}.{alias.name}".lstrip(".")
                deps.add(sub if sub in modules else target)
        graph[name] = deps - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def test_the_import_graph_sees_every_kind_of_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {"__init__.py": "", "sub/__init__.py": "from .. import c\n",
             "a.py": "from .b import x\n", "b.py": "def f():\n    from .a import y\n",
             "c.py": "from . import sub\nimport pkg.a\n", "d.py": "from pkg.sub import z\n"}
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(package)
    assert graph == {"": set(), "sub": {"c"}, "a": {"b"}, "b": {"a"}, "c": {"sub", "a"},
                     "d": {"sub"}}
    assert "a" in reachable(graph, "a") and "c" in reachable(graph, "c")
    assert "d" not in reachable(graph, "d")


def test_no_module_of_the_package_is_in_an_import_cycle():
    graph = import_graph()
    assert {"report", "report.figures", "prune.cut", "sparsity", "controller"} <= set(graph)
    assert [m for m in sorted(graph) if m in reachable(graph, m)] == []


def test_the_selection_rule_is_the_lowest_pruning_module():
    graph = import_graph()
    assert graph["prune.selection"] == set()  # it imports no other ncslim module
    assert "prune.selection" in graph["prune.generic"] and "prune.selection" in graph["prune.cut"]
    assert "prune.cut" not in reachable(graph, "prune.generic")


# docs/architecture.md, lowest first
LAYERS = ("util", "data", "models", "prune", "sparsity", "config", "report", "run")


def layer_of(module: str) -> int | None:
    top = module.partition(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


@pytest.mark.parametrize("package", LAYERS)
def test_no_package_imports_one_above_it(package):
    graph = import_graph()
    own = LAYERS.index(package)
    inside = [m for m in graph if layer_of(m) == own]
    assert inside
    upward = {m: sorted(d for d in graph[m] if layer_of(d) is None or layer_of(d) > own)
              for m in inside}
    assert {m: d for m, d in upward.items() if d} == {}
