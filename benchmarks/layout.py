"""The code structure of vgg_jax: units and import edges, sizes, and the config's walk in a run.

    python -m benchmarks.layout [--list]    # from the repository root, ~30 s on CPU; --list: the moves

1. Units: each subpackage and module directly under vgg_jax/ (vgg_jax/__init__.py: `vgg_jax`),
   train.py, eval.py, configs/, benchmarks/. Every import (function-level ones too) is resolved to
   the unit it lands in; the distinct edges between units are counted and checked against RULES.
2. Sizes in vgg_jax/, train.py, eval.py: modules over 400 lines, functions over 40 (def to end).
3. Moves in a tiny synthetic train_and_evaluate under sys.setprofile (all threads): distinct
   (caller, callee) pairs of vgg_jax functions in different modules, the caller being the nearest
   vgg_jax frame below (a generator's: the one that resumes it). A back-up: the callee's module
   imports the caller's (1's graph, per module). The config walk: the moves whose callee gets a
   ConfigDict (the config or a section of it) as an argument.
Modules are found by walking the files, so this runs unchanged on any layout of the package.
"""

import argparse
import ast
import importlib.util
import inspect
import pathlib
import re
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "vgg_jax"
OUTSIDE = ("train.py", "eval.py", "configs", "benchmarks")
SIZED = (PACKAGE, "train.py", "eval.py")
MODULE_LINES, FUNCTION_LINES = 400, 40
# A comprehension's frame counts as the function it is written in.
COMPREHENSION = re.compile(r"(\.<locals>\.<(listcomp|dictcomp|setcomp|genexpr)>)+$")

# Layering: a unit must not import any unit equal to or under these (itself excepted).
RULES = {
    "vgg_jax/core": ("vgg_jax",),  # no other unit of the package, the root and the applications included
    "vgg_jax/data": ("vgg_jax/train", "vgg_jax/evaluate", "vgg_jax/weights"),
    "vgg_jax/weights": ("vgg_jax/train", "vgg_jax/evaluate"),
    "vgg_jax/evaluate": ("vgg_jax/train",),
}


def parse_sources() -> dict[str, tuple[pathlib.Path, ast.Module]]:
    """Dotted module name -> (file, syntax tree), for the package and the units outside it."""
    sources = {}
    for top in (PACKAGE, *OUTSIDE):
        path = ROOT / top
        for file in ([path] if path.is_file() else sorted(path.rglob("*.py"))):
            parts = file.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            sources[name] = (file, ast.parse(file.read_text(), str(file)))
    return sources


def unit(module: str) -> str:
    """The unit a module belongs to: a path (a folder, or a file with .py) at most one level into vgg_jax."""
    parts = module.split(".")
    path = "/".join(parts[:2] if parts[0] == PACKAGE else parts[:1])
    return path if (ROOT / path).is_dir() else path + ".py"


def known_prefix(name: str, known) -> str | None:
    """The longest leading part of a dotted name that is one of our modules (None: another library)."""
    parts = name.split(".")
    return next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in known), None)


def import_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from, relative imports resolved."""
    if not node.level:
        return node.module
    package = module.split(".")[:None if is_package else -1]
    return ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))


def imported_modules(module: str, file: pathlib.Path, tree: ast.Module, known) -> set[str]:
    """Our modules that a file imports anywhere; `from X import y` lands in X.y when that is a module."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(known_prefix(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = import_base(node, module, file.name == "__init__.py")
            found.update(known_prefix(f"{base}.{alias.name}", known) for alias in node.names)
    return found - {None, module}


def import_graph(sources: dict) -> dict[str, set[str]]:
    """Each of our modules -> our modules it imports."""
    return {m: imported_modules(m, f, tree, sources) for m, (f, tree) in sources.items()}


def unit_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(unit(m), unit(t)) for m, targets in graph.items() for t in targets if unit(m) != unit(t)}


def layering_violations(edges: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (importer, imported) unit edges that RULES forbid, and a wing (a subpackage) importing
    the package root or an application module above it, which import the wings."""
    above = lambda t: t == PACKAGE or (t.startswith(PACKAGE + "/") and t.endswith(".py"))
    wing = lambda s: s.startswith(PACKAGE + "/") and not s.endswith(".py")
    return sorted({(s, t) for s, t in edges for banned in RULES.get(s, ()) if t == banned or t.startswith(banned + "/")}
                  | {(s, t) for s, t in edges if wing(s) and above(t)})


def report_units(graph: dict[str, set[str]]) -> None:
    edges = unit_edges(graph)
    units = sorted({unit(m) for m in graph})
    print(f"1. Units and import edges\n  units: {len(units)}, edges: {len(edges)}")
    for u in units:
        print(f"  {u} -> {', '.join(sorted(t for s, t in edges if s == u)) or '(none)'}")
    violations = layering_violations(edges)
    print(f"  layering violations: {len(violations)}")
    for s, t in violations:
        print(f"    {s} -> {t}")


def functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not isinstance(node, ast.ClassDef):
                yield prefix + node.name, node
            yield from functions(node, prefix + node.name + ".")
        else:
            yield from functions(node, prefix)


def report_sizes(sources: dict) -> None:
    sized = {str(f.relative_to(ROOT)): (f, t) for f, t in sources.values() if f.relative_to(ROOT).parts[0] in SIZED}
    lines = {path: len(f.read_text().splitlines()) for path, (f, _) in sized.items()}
    big = sorted(((n, p) for p, n in lines.items() if n > MODULE_LINES), reverse=True)
    long = sorted(((n, f"{path}:{name}") for path, (_, tree) in sized.items() for name, node in functions(tree)
                   if (n := node.end_lineno - node.lineno + 1) > FUNCTION_LINES), reverse=True)
    print(f"2. Sizes ({', '.join(SIZED)})\n  modules over {MODULE_LINES} lines: {len(big)}")
    print("".join(f"    {p} {n}\n" for n, p in big), end="")
    print(f"  functions over {FUNCTION_LINES} lines: {len(long)}")
    print("".join(f"    {name} {n}\n" for n, name in long), end="")
    top = sorted(((n, p) for p, n in lines.items()), reverse=True)[:5]
    print("  largest modules: " + ", ".join(f"{p} {n}" for n, p in top))


def passes_config(frame, config_type) -> bool:
    """Whether a call's arguments (*args and **kwargs included) hold a ConfigDict."""
    code = frame.f_code
    count = (code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)
             + bool(code.co_flags & inspect.CO_VARKEYWORDS))
    values = [frame.f_locals.get(name) for name in code.co_varnames[:count]]
    values += [v for x in values if isinstance(x, (tuple, dict)) for v in (x.values() if isinstance(x, dict) else x)]
    return any(isinstance(v, config_type) for v in values)


class Walk:
    """A profile hook that collects moves: (caller module, caller, callee module, callee) of vgg_jax functions."""

    def __init__(self, sources: dict, config_type):
        self.modules = {str(f): m for m, (f, _) in sources.items() if m.split(".")[0] == PACKAGE}
        self.config_type = config_type
        self.moves, self.config_moves = set(), set()

    def hook(self, frame, event, arg):
        code = frame.f_code
        if event != "call" or code.co_name == "<module>" or code.co_filename not in self.modules:
            return
        caller = frame.f_back
        while caller is not None and caller.f_code.co_filename not in self.modules:
            caller = caller.f_back
        if caller is None or self.modules[caller.f_code.co_filename] == self.modules[code.co_filename]:
            return
        move = (self.modules[caller.f_code.co_filename], COMPREHENSION.sub("", caller.f_code.co_qualname),
                self.modules[code.co_filename], COMPREHENSION.sub("", code.co_qualname))
        self.moves.add(move)
        if move not in self.config_moves and passes_config(frame, self.config_type):
            self.config_moves.add(move)


def training_module(sources: dict):
    """The module that defines train_and_evaluate, wherever the layout puts it."""
    for name, (_, tree) in sources.items():
        if any(isinstance(node, ast.FunctionDef) and node.name == "train_and_evaluate" for node in tree.body):
            return importlib.import_module(name)
    sys.exit(f"no train_and_evaluate in {PACKAGE}")


def tiny_config():
    """The synthetic quickstart shrunk to 3 steps of 8 images on a width x0.125 net."""
    from configs import synthetic

    config = synthetic.get_config()
    config.model.width = 0.125
    config.train.update(num_steps=3, batch_size=8, eval_batch_size=100, log_every=1, eval_every_epochs=100.0)
    return config


def report_walk(sources: dict, graph: dict[str, set[str]], listed: bool) -> None:
    import ml_collections

    module = training_module(sources)
    walk, config = Walk(sources, ml_collections.ConfigDict), tiny_config()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        threading.setprofile(walk.hook)
        sys.setprofile(walk.hook)
        try:
            module.train_and_evaluate(config, workdir)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    print(f"3. Moves in a tiny synthetic run ({module.__name__}.train_and_evaluate, {time.perf_counter() - start:.0f} s)")
    for title, moves in (("all moves", walk.moves), ("config walk", walk.config_moves)):
        back = {m for m in moves if m[0] in graph.get(m[2], ())}
        print(f"  {title}: {len(moves)} moves, {len(back)} back up")
        for move in sorted(moves) if listed else ():
            print(f"    {move[0]}.{move[1]} -> {move[2]}.{move[3]}{'  [back up]' if move in back else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the moves themselves")
    args = parser.parse_args()
    sources = parse_sources()
    graph = import_graph(sources)
    report_units(graph)
    report_sizes(sources)
    report_walk(sources, graph, args.list)


if __name__ == "__main__":
    main()
