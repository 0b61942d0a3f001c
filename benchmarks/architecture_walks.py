"""How scattered some concepts are in the source (issue 26's before/after numbers), by ``ast``.

    python benchmarks/architecture_walks.py [SRC_DIR]     # default: src/ncslim

Every ``.py`` below SRC_DIR is parsed, never imported, and named by its dotted path in the
package (``sparsity.controller``; an ``__init__`` by its package). Docstrings and f-string
fragments never count as string literals. Prints a markdown table, then each row's modules.

1. Config-value walks (FIELDS): modules that read a field from a config -- ``X.f``, ``X["f"]``,
   ``X.get("f")``, ``getattr(X, "f")`` where X's last name (``cfg``, ``self.cfg``, ``cfgs[0]``,
   ``pass_config(cfg, 1)``) contains "cfg"/"config", or ``self.f`` in a class named *Config* --
   or set it by ``replace(..., f=...)``, or hold a dict key ``"f"`` anywhere. Also the modules
   with a parameter annotated ``Config`` or named ``cfg``.
2. A new sparsity method: lines naming the Bayesian baseline -- strings equal to "vcp" or
   starting "vcp_"; identifiers (names, attributes, definitions, parameters, keywords, imports)
   ``vcp`` or ``vcp_*``; not the label "VCP rule" nor the flag "--vcp-mu". Separately: lines that
   compare "none" with something mentioning "penalty", or pass ``penalty="none"``.
3. The prune rule (RULE_FIELDS): lines that read one as in 1, per field and in all.
4. Dataset names: literals equal to one; the names are the keys of a top-level dict ``DATASETS``
   plus a top-level ``FOLDER = "..."`` wherever defined (today ``data/catalog.py``), else
   DATASETS_FALLBACK.
5. Command names (COMMANDS), only where a literal, or a tuple/list/set of command names only,
   stands as a command: in a comparison mentioning "command"/"cmd"; as the keys of a dict whose
   keys all are (or start with) command names; indexing something named "*command*"; as the
   first argument of ``add_parser``, a ``*command*=`` keyword, or the argument of a parameter
   named "*command*" of a function defined below SRC_DIR (matched by name); as a top-level
   ALL_CAPS constant; as the iterable of a ``for`` whose body mentions "command". So folder names
   ("train"), stage names and results keys ("prune") do not count.
6. File sizes: files over MAX_LINES lines, the five largest, top-level vs subpackage modules.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

FIELDS = ("lam", "ratio", "dataset", "min_channels", "penalty")
RULE_FIELDS = ("ratio", "threshold", "target_flops", "target_params", "min_channels", "round_to",
               "max_layer_ratio", "compensate", "cost_weighted", "ranking")
COMMANDS = frozenset({"run", "train", "prune", "finetune", "info", "sweep", "report", "export"})
DATASETS_FALLBACK = ("fashion-mnist", "cifar10", "cifar100", "svhn", "folder")
MAX_LINES = 350
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)

Hits = dict[str, set[int]]  # module -> line numbers


def text(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def last_name(node: ast.AST) -> str:
    """The name an expression ends with: ``self.cfg`` -> cfg, ``cfgs[0]`` -> cfgs, ``f(x)`` -> f."""
    while isinstance(node, (ast.Subscript, ast.Call)):
        node = node.value if isinstance(node, ast.Subscript) else node.func
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def is_cfg(node: ast.AST) -> bool:
    name = last_name(node).lower()
    return "cfg" in name or "config" in name


def mentions(node: ast.AST, *words: str) -> bool:
    """Whether a name, attribute or string inside ``node`` contains one of ``words``."""
    found = (getattr(sub, "id", None) or getattr(sub, "attr", None) or text(sub) for sub in
             ast.walk(node) if isinstance(sub, (ast.Name, ast.Attribute, ast.Constant)))
    return any(isinstance(s, str) and any(w in s.lower() for w in words) for s in found)


def skipped(tree: ast.Module) -> set[int]:
    """The ids of the docstrings and of everything inside f-strings."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.update(id(sub) for sub in ast.walk(node))
        elif isinstance(node, (ast.Module, ast.ClassDef, *FUNCS)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and text(first.value) is not None:
                out.add(id(first.value))
    return out


def load(src: Path) -> dict[str, tuple[ast.Module, int, bool]]:
    """Module name -> (tree, lines, at the top of the package)."""
    modules = {}
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or src.name
        source = path.read_text(encoding="utf-8")
        modules[name] = (ast.parse(source, str(path)), len(source.splitlines()), len(parts) == 1)
    return modules


def call_reads(call: ast.Call, fields: set[str]) -> list[tuple[str, int]]:
    func, args = call.func, call.args
    if last_name(func) == "replace":
        return [(k.arg, k.lineno) for k in call.keywords if k.arg in fields]
    if isinstance(func, ast.Attribute) and func.attr == "get" and args and is_cfg(func.value):
        return [(text(args[0]), call.lineno)] if text(args[0]) in fields else []
    if isinstance(func, ast.Name) and func.id == "getattr" and len(args) > 1 and is_cfg(args[0]):
        return [(text(args[1]), call.lineno)] if text(args[1]) in fields else []
    return []


def field_reads(tree: ast.Module, fields: set[str]) -> list[tuple[str, int]]:
    own = {id(node.value) for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef)
           and "config" in cls.name.lower() for node in ast.walk(cls)
           if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "self"}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in fields and (
                is_cfg(node.value) or id(node.value) in own):
            out.append((node.attr, node.lineno))
        elif isinstance(node, ast.Subscript) and text(node.slice) in fields and is_cfg(node.value):
            out.append((text(node.slice), node.lineno))
        elif isinstance(node, ast.Dict):
            out += [(text(k), k.lineno) for k in node.keys if text(k) in fields]
        elif isinstance(node, ast.Call):
            out += call_reads(node, fields)
    return out


def takes_config(tree: ast.Module) -> bool:
    return any(isinstance(a, ast.arg) and (a.arg == "cfg" or a.annotation is not None and "Config"
               in re.findall(r"\w+", ast.unparse(a.annotation))) for a in ast.walk(tree))


def vcp_lines(tree: ast.Module, skip: set[int]) -> tuple[set[int], set[int]]:
    """(lines naming VCP, lines comparing "none" with a penalty or passing penalty="none")."""
    named, none = set(), set()
    for node in ast.walk(tree):
        # identifiers: Name, Attribute, definitions, arg, keyword, alias, ImportFrom (dotted: last)
        names = [text(node)] if isinstance(node, ast.Constant) and id(node) not in skip else [
            v.split(".")[-1] for f in ("id", "attr", "name", "arg", "asname", "module")
            if isinstance(v := getattr(node, f, None), str)]
        if any(n and (n == "vcp" or n.startswith("vcp_")) for n in names):
            named.add(node.lineno)
        if isinstance(node, ast.keyword) and node.arg == "penalty" and text(node.value) == "none" \
                or isinstance(node, ast.Compare) and mentions(node, "penalty") \
                and any(text(sub) == "none" for sub in ast.walk(node)):
            none.add(node.lineno)
    return named, none


def command_collection(node: ast.AST) -> bool:
    if text(node) in COMMANDS:
        return True
    elts = getattr(node, "elts", None) if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else None
    return bool(elts) and all(text(e) in COMMANDS for e in elts)


def command_operands(node: ast.AST, params: dict[str, list[list[str]]]) -> list[ast.AST]:
    """The expressions of ``node`` that stand where a command name is expected."""
    if isinstance(node, ast.Compare) and mentions(node, "command", "cmd"):
        return [node.left, *node.comparators]
    keys = [k.elts[0] if isinstance(k, ast.Tuple) and k.elts else k
            for k in getattr(node, "keys", [])] if isinstance(node, ast.Dict) else []
    if keys and all(text(k) in COMMANDS for k in keys):
        return keys
    if isinstance(node, ast.Subscript) and mentions(node.value, "command"):
        return [node.slice]
    if isinstance(node, ast.For) and any(mentions(s, "command") for s in node.body):
        return [node.iter]
    if not isinstance(node, ast.Call):
        return []
    name = last_name(node.func)
    if name == "add_parser":
        return node.args[:1]
    out = [k.value for k in node.keywords if k.arg and "command" in k.arg]
    return out + [a for i, a in enumerate(node.args)
                  if any(i < len(p) and "command" in p[i] for p in params.get(name, ()))]


def command_lines(tree: ast.Module, skip: set[int], params: dict[str, list[list[str]]]) -> set[int]:
    operands = [op for node in ast.walk(tree) for op in command_operands(node, params)]
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None and all(
                isinstance(t, ast.Name) and t.id.isupper() for t in targets):
            operands.append(stmt.value)
    return {sub.lineno for op in operands if command_collection(op)
            for sub in ast.walk(op) if text(sub) in COMMANDS and id(sub) not in skip}


def catalog(trees: list[ast.Module]) -> tuple[frozenset[str], str]:
    """The dataset names and where they came from."""
    top = {getattr(t, "id", None): stmt.value for tree in trees for stmt in tree.body
           if isinstance(stmt, (ast.Assign, ast.AnnAssign))
           for t in getattr(stmt, "targets", [getattr(stmt, "target", None)])}
    if isinstance(top.get("DATASETS"), ast.Dict):
        names = {text(k) for k in top["DATASETS"].keys} | {text(top.get("FOLDER"))}
        return frozenset(names - {None}), "parsed from DATASETS and FOLDER"
    return frozenset(DATASETS_FALLBACK), "hard-coded fallback: no DATASETS dict found"


def measure(src: Path) -> tuple[list[tuple[str, Hits | int]], list[str], dict]:
    modules = load(src)
    trees = [tree for tree, _, _ in modules.values()]
    params: dict[str, list[list[str]]] = defaultdict(list)
    for node in (n for tree in trees for n in ast.walk(tree) if isinstance(n, FUNCS)):
        names = [a.arg for a in node.args.posonlyargs + node.args.args]
        params[node.name].append(names[1:] if names[:1] in (["self"], ["cls"]) else names)
    datasets, origin = catalog(trees)
    hits: dict[str, Hits] = defaultdict(lambda: defaultdict(set))
    fields = set(FIELDS) | set(RULE_FIELDS)
    for name, (tree, _, _) in modules.items():
        skip = skipped(tree)
        for field, line in field_reads(tree, fields):
            hits[field][name].add(line)
            if field in RULE_FIELDS:
                hits["rule"][name].add(line)
        if takes_config(tree):
            hits["config"][name].add(0)
        hits["vcp"][name], hits["none"][name] = vcp_lines(tree, skip)
        hits["datasets"][name] = {n.lineno for n in ast.walk(tree)
                                  if text(n) in datasets and id(n) not in skip}
        hits["commands"][name] = command_lines(tree, skip, params)
    big = sorted(((lines, name) for name, (_, lines, _) in modules.items()), reverse=True)
    rows: list[tuple[str, Hits | int]] = [
        *((f"`{f}` walk: modules that read or set it from a config", hits[f]) for f in FIELDS),
        ("modules that receive a `Config` (annotated or `cfg`)", hits["config"]),
        ("new sparsity method: lines naming VCP", hits["vcp"]),
        ('new sparsity method: `"none"` compared with a penalty', hits["none"]),
        *((f"prune-rule field `{f}`: reads", hits[f]) for f in RULE_FIELDS),
        ("prune rule, all fields: distinct files", hits["rule"]),
        (f"dataset-name literals ({', '.join(sorted(datasets))})", hits["datasets"]),
        ("command-name literals", hits["commands"]),
        (f"src files over {MAX_LINES} lines", sum(lines > MAX_LINES for lines, _ in big)),
        ("modules at the top of the package", sum(top for _, _, top in modules.values())),
        ("modules in subpackages", sum(not top for _, _, top in modules.values())),
    ]
    largest = [f"{name} ({lines})" for lines, name in big[:5]]
    largest.append(f"over {MAX_LINES}: " + ", ".join(n for lines, n in big if lines > MAX_LINES))
    info = {"modules": len(modules), "lines": sum(lines for lines, _ in big), "origin": origin}
    return rows, largest, info


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "src" / "ncslim"
    rows, largest, info = measure(src)
    print(f"# Architecture walks: {src.name} ({info['modules']} modules, {info['lines']} lines)\n")
    print(f"Dataset names {info['origin']}.\n")
    print("| item | modules | places (lines) |\n|---|---:|---:|")
    details = []
    for label, value in rows:
        if isinstance(value, int):
            print(f"| {label} | {value} | |")
            continue
        used = {name: lines for name, lines in sorted(value.items()) if lines}
        places = sum(len(lines - {0}) for lines in used.values())
        print(f"| {label} | {len(used)} | {places if places else ''} |")
        details.append(f"- {label}: " + (", ".join(
            name + (f" ({len(lines)})" if lines != {0} else "") for name, lines in used.items())
            or "none"))
    print("\n## Modules involved\n\n" + "\n".join(details))
    print(f"- largest files: {', '.join(largest[:-1])}; {largest[-1]}")


if __name__ == "__main__":
    main()
