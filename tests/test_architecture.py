"""The package's shape: imports between its first-level units run one way (no import loop), no module imports
itself back (the package root included), the explainer's metadata has one reader, LRP rule choice has one home
(no rule names compared outside xcompile/lrp/), no module grows past ~400 lines, and every pass of the
canonicalizer stays linear in the graph size."""
from __future__ import annotations

import ast
import gc
import time
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PKG = Path(__file__).resolve().parent.parent / "xcompile"
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """First-level unit of the package: xcompile.backward.ops.linear -> backward, xcompile.compiler -> compiler."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> nx.DiGraph:
    """unit -> unit edges for every import inside xcompile/ (function-level imports included)."""
    units = {p.stem for p in PKG.glob("*.py")} | {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    dg = nx.DiGraph()
    for f in PKG.rglob("*.py"):
        mod = _module(f)
        pkg = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        dg.add_node(_unit(mod))
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    m = ".".join(base + ([node.module] if node.module else []))
                else:
                    m = node.module or ""
                targets = [m] + [f"{m}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith("xcompile.") and _unit(t) in units and _unit(t) != _unit(mod):
                    dg.add_edge(_unit(mod), _unit(t))
    return dg


def test_no_import_loops_between_units():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], f"import loops between first-level units: {cycles}"


def module_graph() -> nx.DiGraph:
    """module -> module edges for every import inside xcompile/ (function-level imports included), the package root
    `xcompile` (its __init__) a module like the others."""
    mods = {_module(f): f for f in PKG.rglob("*.py")}
    dg = nx.DiGraph()
    for mod, f in mods.items():
        pkg = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        dg.add_node(mod)
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                m = (".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([node.module] if node.module
                                                                                     else [])) if node.level
                     else node.module or "")
                # `from . import verify` imports the submodule; `from . import __version__` the package itself
                targets = [f"{m}.{a.name}" if f"{m}.{a.name}" in mods else m for a in node.names]
            else:
                continue
            dg.add_edges_from((mod, t) for t in targets if t in mods and t != mod)
    return dg


def test_no_import_loops_between_modules_package_root_included():
    cycles = list(nx.simple_cycles(module_graph()))
    assert cycles == [], f"import loops between modules: {cycles}"


def _sources(skip=()):
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG).as_posix()
        if not any(rel == s or rel.startswith(s) for s in skip):
            yield rel, ast.parse(f.read_text())


def test_one_metadata_reader():
    """The explainer's metadata is read and written in xcompile/metadata.py only (ExplainerMeta): no other module
    touches metadata_props / custom_metadata_map or spells the "xcompile." key prefix."""
    bad = []
    for rel, tree in _sources(skip=("metadata.py",)):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("metadata_props", "custom_metadata_map"):
                bad.append(f"{rel}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Constant) and node.value == "xcompile.":
                bad.append(f"{rel}:{node.lineno} 'xcompile.'")
    assert bad == [], bad


def test_no_branching_on_rule_names_outside_lrp():
    """Rule choice lives in xcompile/lrp/ (policy.py; rules bind themselves to nodes): no module outside it compares
    a rule's name (`rule == "zbox"`, `e.rule in ("zbox", "zb")`)."""
    from xcompile.lrp.rules import RULES
    names = set(RULES)
    bad = []
    for rel, tree in _sources(skip=("lrp/",)):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            consts = {c.value for x in [node.left, *node.comparators] for c in ast.walk(x)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)}
            text = ast.unparse(node)
            if consts & names and "rule" in text.lower():
                bad.append(f"{rel}:{node.lineno} {text}")
    assert bad == [], bad


def test_low_layers_import_nothing_above_them():
    dg = import_graph()
    for low in ("graph", "kinds", "options", "errors", "protobuf_limit", "sessions"):
        assert not set(nx.descendants(dg, low)) & {"methods", "compiler", "commands", "patterns", "lrp"}, low
    assert not set(dg.successors("write")) & {"methods", "compiler", "commands", "lrp", "patterns"}
    assert {u for u, _ in dg.in_edges("commands")} <= {"cli", "__main__"}


def test_no_module_over_the_size_limit():
    big = {str(f.relative_to(PKG.parent)): n for f in PKG.rglob("*.py")
           if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"


# ------------------------------------------------------------------------- canonicalization scales linearly
def _identity_chain(n: int) -> onnx.ModelProto:
    nodes, t = [], "x"
    for i in range(n):
        nodes.append(helper.make_node("Identity", [t], [f"t{i}"], name=f"id{i}"))
        t = f"t{i}"
    nodes.append(helper.make_node("Add", [t, "c"], ["y"], name="add"))
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                          initializer=[numpy_helper.from_array(np.ones((1, 2), np.float32), "c")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _timed(fn, n: int) -> float:
    """Seconds for fn on an n-node chain, the garbage collector off: in a long test session its pauses scale with
    everything else alive, not with n."""
    m = _identity_chain(n)
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        assert fn(m) == n
        return time.perf_counter() - t0
    finally:
        gc.enable()


def test_drop_identity_is_linear():
    from xcompile.canonicalize.passes import drop_identity
    m = _identity_chain(3)
    drop_identity(m)
    assert [n.op_type for n in m.graph.node] == ["Add"] and list(m.graph.node[0].input) == ["x", "c"]
    small = min(_timed(drop_identity, 1000) for _ in range(3))
    large = min(_timed(drop_identity, 10000) for _ in range(2))
    assert large / max(small, 1e-4) <= 20, (small, large)


def test_forward_graph_is_built_by_load_only():
    """The ForwardGraph (`g`) is assembled while loading (load/, graph.py); later stages read it: no assignment to
    `g.<field>` or `g.<field>[...]` elsewhere (facts computed later go to its declared `derived` cache)."""
    bad = []
    for rel, tree in _sources(skip=("load/", "graph.py", "canonicalize/")):  # canonicalize: g is a GraphProto
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in [e for t in targets for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])]:
                base = t.value if isinstance(t, ast.Subscript) else t
                if not isinstance(base, ast.Attribute):
                    continue
                owner = ast.unparse(base.value)
                if owner in ("g", "self.g", "ctx.g") and base.attr != "derived":
                    bad.append(f"{rel}:{node.lineno} {ast.unparse(t)}")
    assert bad == [], bad
