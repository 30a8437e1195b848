"""Control flow (ONNX If / Loop / Scan) inlined into the main graph, so that the ONE backward engine and its op table
(and every LRP rule set) see ordinary nodes: there is no second engine for subgraphs.

- ``If`` whose condition is fixed for the compiled sample shape (a constant, or shape arithmetic that the probe
  measured equal at batch 1 and 2): the taken branch is inlined.
- ``If`` with a run-time condition: both branches are inlined and each output becomes
  ``Where(cond, then_k, else_k)`` (cond is a scalar: one branch per call). Its backward is the op table's Where:
  the taken branch's backward receives the relevance, the other exactly zero, so each branch's reads of outer
  tensors get their share — the same as an ``If`` over both branches' backwards (which the engine would have to
  emit as subgraphs). Both branches are evaluated, the one not taken on zeros (its outer float reads pass through
  ``Where(cond, t, 0)``, whose backward also cuts a NaN of a guarded log / sqrt there); outputs of different shapes
  in the two branches are refused.
- ``Loop`` unrolled when its trip count is known at compile time: ``M`` (and the initial condition) constant, and
  the condition each iteration computes evaluated as a constant from the iteration number and constant loop-carried
  values (the tf2onnx ``while`` pattern: counters compared with the sequence length). Loop-invariant body nodes are
  emitted once; the body's reads of outer tensors (tf2onnx's ``TensorListGetItem`` = Gather of the outer sequence)
  become ordinary edges. Scan outputs are Unsqueeze + Concat.
- ``Scan`` unrolled over the scan axis' length, fixed by the compiled sample shape (Gather per step, both
  directions, any axes).

Anything else (a condition or trip count that depends on the data, a scan length that varies with the batch, more
than ``MAX_STEPS`` iterations) stays as it is with the reason on the node; its backward (backward/ops/control.py)
refuses it in one line, and the engine's relevance paths see through subgraph reads (graph.py), so a relevance
path through a node with subgraphs is never silently zero."""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import XCompileError
from ..graph import attrs, defined_names, outer_reads, outer_reads_of, subgraphs
from ..kinds import RANDOM_OPS, SHAPE_SOURCES
from .rewrite import Decision, GraphIndex

CONTROL_OPS = ("If", "Loop", "Scan")
MAX_STEPS = 4096       # iterations unrolled at most (a while loop without a known bound is refused)
MAX_NODES = 400_000    # nodes the unrolled graph may grow to
SMALL = 4096           # elements of a per-iteration constant evaluated at compile time (counters, conditions)


def _rename_graph(graph, f) -> None:
    for n in graph.node:
        _rename_node(n, f)
    for coll in (graph.input, graph.output, graph.value_info):
        for vi in coll:
            vi.name = f(vi.name)
    for t in graph.initializer:
        t.name = f(t.name)


def _rename_node(n, f) -> None:
    for k, i in enumerate(n.input):
        n.input[k] = f(i)
    for k, o in enumerate(n.output):
        n.output[k] = f(o)
    if n.name:
        n.name = f"{f.prefix}{n.name}"
    for s in subgraphs(n):
        _rename_graph(s, f)


class _Renamer:
    """Internal names get a prefix; explicit substitutions first; outer names and "" unchanged."""

    def __init__(self, prefix: str, defined: set, subst: dict):
        self.prefix, self.defined, self.subst = prefix, defined, subst

    def __call__(self, name: str) -> str:
        if not name:
            return name
        if name in self.subst:
            return self.subst[name]
        return self.prefix + name if name in self.defined else name


class _Inliner:
    def __init__(self, model, static, shapes, decisions, dtype_of=lambda name: None):
        self.model, self.g = model, model.graph
        self.static, self.shapes, self.decisions, self.dtype_of = static, shapes, decisions, dtype_of
        self.static_names = {t.name for t in model.graph.initializer}
        self.new_inits: list = []
        self.consts: dict = {}       # name -> value of the constants this pass made (counters, conditions)
        self.pairs: list = []        # (If node, then output, else output) to check after the probe
        self.count = 0
        self._n = 0

    # ---------------------------------------------------------------- helpers
    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"xc_cf/{self._n}/{hint}"

    def const(self, value, hint="const") -> str:
        name = self.fresh(hint)
        self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        self.consts[name] = np.asarray(value)
        return name

    def add_init(self, t) -> None:
        self.new_inits.append(t)
        if np.prod(t.dims) <= SMALL:  # small body constants take part in the per-iteration evaluation
            self.consts[t.name] = numpy_helper.to_array(t)

    def value(self, name: str):
        if name in self.consts:
            return self.consts[name]
        return self.static(name)

    def inline(self, body, prefix, subst, invariant=None) -> list:
        """Copies of the body's nodes (and initializers) renamed; `invariant`: {body name: outer name} already emitted."""
        defined = defined_names(body)
        ren = _Renamer(prefix, defined, {**(invariant or {}), **subst})
        nodes = []
        for n in body.node:
            if invariant is not None and n.output and all(o in invariant for o in n.output if o):
                continue
            c = copy.deepcopy(n)
            _rename_node(c, ren)
            nodes.append(c)
        for t in body.initializer:
            if invariant is not None and t.name in invariant:
                continue
            c = copy.deepcopy(t)
            c.name = ren(t.name)
            self.add_init(c)
        return nodes

    def fold(self, nodes: list) -> list:
        """Evaluate, at compile time, the nodes whose inputs are all known small constants (iteration counters,
        loop conditions); the rest stay."""
        from onnx.reference import ReferenceEvaluator
        keep = []
        for n in nodes:
            vals = [self.value(i) if i else None for i in n.input]
            if (n.op_type in RANDOM_OPS or subgraphs(n) or n.domain not in ("", "ai.onnx")
                    or any(i and v is None for i, v in zip(n.input, vals))
                    or any(v is not None and np.size(v) > SMALL for v in vals)):
                keep.append(n)
                continue
            try:
                outs = ReferenceEvaluator(n).run(None, {i: v for i, v in zip(n.input, vals) if i})
            except Exception:  # noqa: BLE001 - not evaluable here: the node stays
                keep.append(n)
                continue
            for o, v in zip(n.output, outs):
                if o:
                    self.consts[o] = np.asarray(v)
                    self.new_inits.append(numpy_helper.from_array(np.asarray(v), o))
        return keep

    def decline(self, node, reason: str) -> list:
        node.doc_string = f"xcompile: {reason}"
        if self.decisions is not None:
            self.decisions.append(Decision("inline_control_flow", node.name or node.output[0], False, reason))
        return [node]

    # ---------------------------------------------------------------- operators
    def If(self, node) -> list:
        a = {x.name: x.g for x in node.attribute}
        then_b, else_b = a["then_branch"], a["else_branch"]
        c = self.value(node.input[0])
        tag = node.name or node.output[0]
        if c is not None:
            branch = then_b if bool(np.asarray(c).reshape(-1)[0]) else else_b
            nodes = self.inline(branch, f"{tag}/{'then' if branch is then_b else 'else'}/", {})
            ren = _Renamer(f"{tag}/{'then' if branch is then_b else 'else'}/", defined_names(branch), {})
            nodes += [helper.make_node("Identity", [ren(o.name)], [y]) for o, y in zip(branch.output, node.output) if y]
            return nodes
        cond = self.fresh("cond")
        nodes = [helper.make_node("Reshape", [node.input[0], self.const(np.zeros(0, np.int64), "scalar")], [cond])]
        outs = []
        for branch, name in ((then_b, "then"), (else_b, "else")):
            prefix = f"{tag}/{name}/"
            # each branch reads the outer float tensors through Where(cond, t, 0) (else: Where(cond, 0, t)): the
            # branch that is not taken computes on zeros and its backward (0 * inf = NaN in a guarded log / sqrt /
            # division) is cut by that Where's backward, as if the branch had not run; weights stay constant reads
            gated = {}
            for t in sorted(outer_reads(branch)):
                dt = self.dtype_of(t)
                if t in self.static_names or dt is None or np.dtype(dt).kind != "f":
                    continue
                gated[t] = self.fresh(f"{name}_read")
                zero = self.const(np.zeros((), dt), "zero")
                nodes.append(helper.make_node("Where", [cond, t, zero] if name == "then" else [cond, zero, t],
                                              [gated[t]], name=f"{tag}/{name}/read/{t}"))
            nodes += self.inline(branch, prefix, gated)
            ren = _Renamer(prefix, defined_names(branch), dict(gated))
            outs.append([ren(o.name) for o in branch.output])
        for t, e, y in zip(outs[0], outs[1], node.output):
            if y:
                nodes.append(helper.make_node("Where", [cond, t, e], [y], name=f"{tag}/where"))
                self.pairs.append((tag, t, e))
        return nodes

    def Loop(self, node) -> list:
        body = next(x.g for x in node.attribute if x.name == "body")
        tag = node.name or node.output[0]
        m_name = node.input[0] if node.input else ""
        c_name = node.input[1] if len(node.input) > 1 else ""
        trip = None
        if m_name:
            m = self.value(m_name)
            if m is None:
                return self.decline(node, f"its trip count {m_name!r} depends on the data")
            trip = int(np.asarray(m).reshape(-1)[0])
        cond = True
        if c_name:
            cv = self.value(c_name)
            if cv is None:
                return self.decline(node, f"its condition {c_name!r} depends on the data")
            cond = bool(np.asarray(cv).reshape(-1)[0])
        n_carried = len(node.input) - 2
        carried = list(node.input[2:])
        b_in = [i.name for i in body.input]
        b_out = [o.name for o in body.output]
        n_scan = len(b_out) - 1 - n_carried
        inv = self.invariant(body, set(b_in))
        nodes = self.fold(self.inline_invariant(body, f"{tag}/inv/", inv))
        scans: list = [[] for _ in range(n_scan)]
        steps = 0
        while cond and (trip is None or steps < trip):
            if steps >= MAX_STEPS or self.count + len(nodes) > MAX_NODES:
                return self.decline(node, f"more than {MAX_STEPS} iterations or {MAX_NODES} nodes to unroll")
            prefix = f"{tag}/it{steps}/"
            subst = {b_in[0]: self.const(np.array(steps, np.int64), "iter"), b_in[1]: self.const(np.array(cond), "cond")}
            subst.update({b: o for b, o in zip(b_in[2:], carried)})
            step = self.fold(self.inline(body, prefix, subst, inv))
            nodes += step
            ren = _Renamer(prefix, defined_names(body), {**inv, **subst})
            cv = self.value(ren(b_out[0]))
            if cv is None:
                return self.decline(node, "its condition is computed from the data (trip count not known at compile time)")
            cond = bool(np.asarray(cv).reshape(-1)[0])
            carried = [ren(o) for o in b_out[1:1 + n_carried]]
            for k, o in enumerate(b_out[1 + n_carried:]):
                scans[k].append(ren(o))
            steps += 1
        if n_scan and steps == 0:
            return self.decline(node, "it runs zero iterations and has scan outputs")
        for y, t in zip(node.output[:n_carried], carried):
            if y:
                nodes.append(helper.make_node("Identity", [t], [y]))
        axes = self.const(np.array([0], np.int64), "axes")
        for y, parts in zip(node.output[n_carried:], scans):
            if y:
                ups = [self.fresh("step") for _ in parts]
                nodes += [helper.make_node("Unsqueeze", [p, axes], [u]) for p, u in zip(parts, ups)]
                nodes.append(helper.make_node("Concat", ups, [y], axis=0, name=f"{tag}/scan_output"))
        return nodes

    def Scan(self, node) -> list:
        body = next(x.g for x in node.attribute if x.name == "body")
        tag = node.name or node.output[0]
        at = attrs(node)
        m = at["num_scan_inputs"]
        n = len(node.input) - m
        xs = list(node.input[n:])
        in_axes = list(at.get("scan_input_axes") or [0] * m)
        in_dirs = list(at.get("scan_input_directions") or [0] * m)
        k_out = len(body.output) - n
        out_axes = list(at.get("scan_output_axes") or [0] * k_out)
        out_dirs = list(at.get("scan_output_directions") or [0] * k_out)
        lengths = set()
        for x, ax in zip(xs, in_axes):
            shape = self.shapes.get(x)
            if shape is None:
                return self.decline(node, f"the shape of its scan input {x!r} is not known")
            d = shape[ax % len(shape)]
            if d is None:
                return self.decline(node, f"its scan length (axis {ax} of {x!r}) varies with the batch")
            lengths.add(int(d))
        if len(lengths) != 1:
            return self.decline(node, f"its scan inputs have different lengths {sorted(lengths)}")
        T = lengths.pop()
        if T == 0 or T > MAX_STEPS:
            return self.decline(node, f"a scan length of {T} is not unrolled (1..{MAX_STEPS})")
        b_in = [i.name for i in body.input]
        b_out = [o.name for o in body.output]
        inv = self.invariant(body, set(b_in))
        nodes = self.fold(self.inline_invariant(body, f"{tag}/inv/", inv))
        state = list(node.input[:n])
        scans: list = [[] for _ in range(k_out)]
        for t in range(T):
            prefix = f"{tag}/it{t}/"
            subst = {b: s for b, s in zip(b_in[:n], state)}
            for j, (x, ax, rev) in enumerate(zip(xs, in_axes, in_dirs)):
                sl = self.fresh("slice")
                nodes.append(helper.make_node("Gather", [x, self.const(np.array(T - 1 - t if rev else t, np.int64), "t")],
                                              [sl], axis=ax, name=f"{tag}/it{t}/scan_input{j}"))
                subst[b_in[n + j]] = sl
            nodes += self.fold(self.inline(body, prefix, subst, inv))
            ren = _Renamer(prefix, defined_names(body), {**inv, **subst})
            state = [ren(o) for o in b_out[:n]]
            for k, o in enumerate(b_out[n:]):
                scans[k].append(ren(o))
        for y, s in zip(node.output[:n], state):
            if y:
                nodes.append(helper.make_node("Identity", [s], [y]))
        for y, parts, ax, rev in zip(node.output[n:], scans, out_axes, out_dirs):
            if y:
                parts = parts[::-1] if rev else parts
                axes = self.const(np.array([ax], np.int64), "axes")
                ups = [self.fresh("step") for _ in parts]
                nodes += [helper.make_node("Unsqueeze", [p, axes], [u]) for p, u in zip(parts, ups)]
                nodes.append(helper.make_node("Concat", ups, [y], axis=ax, name=f"{tag}/scan_output"))
        return nodes

    # ---------------------------------------------------------------- loop invariants
    def invariant(self, body, per_step: set) -> dict:
        """{body name: hoisted name} of the body tensors that do not change between iterations (they depend only on
        outer tensors and the body's initializers): emitted once, not once per step."""
        varying = set(per_step)
        inv = {}
        for n in body.node:
            reads = {i for i in n.input if i} | outer_reads_of(n)
            if n.op_type in RANDOM_OPS or reads & varying:
                varying.update(o for o in n.output if o)
            else:
                inv.update({o: None for o in n.output if o})
        inv.update({t.name: None for t in body.initializer})
        return inv

    def inline_invariant(self, body, prefix: str, inv: dict) -> list:
        defined = defined_names(body)
        for k in inv:
            inv[k] = prefix + k
        ren = _Renamer(prefix, defined, {})
        nodes = []
        for n in body.node:
            if n.output and all(o in inv for o in n.output if o):
                c = copy.deepcopy(n)
                _rename_node(c, ren)
                nodes.append(c)
        for t in body.initializer:
            c = copy.deepcopy(t)
            c.name = ren(t.name)
            self.add_init(c)
        return nodes


def inline_control_flow(model: onnx.ModelProto, at_one: Optional[dict] = None, at_two: Optional[dict] = None,
                        shapes: Optional[dict] = None, decisions: Optional[list] = None) -> tuple[int, list]:
    """Inline every top-level If / Loop / Scan that can be (module docstring). Returns (number inlined, the
    (If, then output, else output) pairs whose probed shapes must agree)."""
    g = model.graph
    if not any(n.op_type in CONTROL_OPS for n in g.node):
        return 0, []
    inits = {t.name: t for t in g.initializer}
    dependent = {i.name for i in g.input if i.name not in inits}
    for n in g.node:  # data dependence through explicit inputs and subgraph reads; shape sources end it
        if n.op_type in SHAPE_SOURCES:
            continue
        reads = set(n.input) | outer_reads_of(n)
        if reads & dependent:
            dependent.update(o for o in n.output if o)

    def static(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if at_one is None or at_two is None or name in dependent or name not in at_one or name not in at_two:
            return None
        a, b = np.asarray(at_one[name]), np.asarray(at_two[name])
        return a if a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b) else None

    declared = {i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in g.input
                if i.name not in inits and i.type.HasField("tensor_type")}

    def dtype_of(name):
        if at_one is not None and name in at_one:
            return np.asarray(at_one[name]).dtype
        return declared.get(name)

    inl = _Inliner(model, static, shapes or {}, decisions, dtype_of)
    out = []
    for n in g.node:
        if n.op_type in CONTROL_OPS and n.domain in ("", "ai.onnx"):
            new = getattr(inl, n.op_type)(n)
            if new != [n]:
                inl.count += 1
                if decisions is not None:
                    decisions.append(Decision("inline_control_flow", n.name or n.output[0], True))
            out.extend(new)
        else:
            out.append(n)
    if inl.count:
        GraphIndex(model).set_nodes(out)
        g.initializer.extend(inl.new_inits)
    return inl.count, inl.pairs


def check_if_shapes(pairs: list, shapes: dict, where: str) -> None:
    """A run-time If's two branches must give outputs of one shape (Where would broadcast them silently)."""
    for tag, t, e in pairs:
        if t in shapes and e in shapes and shapes[t] != shapes[e]:
            raise XCompileError(f"{where}: node {tag!r} (If): its branches give outputs of different shapes "
                                f"{list(shapes[t])} and {list(shapes[e])}: not supported")
