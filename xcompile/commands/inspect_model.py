"""`xcompile inspect`: how a method treats every forward node on the relevance path (the LRP rule chosen for each
linear layer, pass / proportional / gradient elsewhere), and every unsupported node."""
from __future__ import annotations

from ..backward.builder import Builder
from ..backward.table import NON_DIFFERENTIABLE
from ..compiler import load_forward, make_method, method_class
from ..errors import UnsupportedOperatorsError
from ..methods.treeshap import refuse_gradients as refuse_trees


def inspect_model(model_path, method: str, rules, params: dict, echo) -> int:
    where = str(model_path)
    shown = explainer_summary(model_path, echo)
    if shown:  # an explainer written by `compile`: what it explains and its self-check (docs/selfcheck.md)
        return 0
    cls = method_class(method)
    if getattr(cls, "compile_model", None):
        echo(f"{where}: method {method!r} builds its own explainer graph (neuralized models, tree ensembles); no per-node table")
        return 0
    m, common = make_method(cls, method, rules, params or {})
    g = load_forward(model_path, common, where)
    refuse_trees(g.model, method, where)  # as compile does: a tree ensemble names treeshap / occlusion
    engine = m.engine(g, Builder(g.opset))
    live, nodes = engine.paths()
    m.prepare(g, where)
    try:  # the support check `compile` runs (Method.check): every unsupported node, emitter refusals included
        m.check(g, where, full=True)
        bad = []
    except UnsupportedOperatorsError as e:
        bad = e.nodes
    why = {n[0]: (n[2] if len(n) > 2 else "") for n in bad}
    choices = getattr(m, "choices", None)
    rs = m.ruleset() if getattr(cls, "uses_rules", False) else None  # rule sets for any model (auto): say why
    by_block = rs is not None and rs.options.get("designed_for") == "any" and any(s.key == "block" for e in rs.entries for s in e.select)
    header = f"{where}: method {method}" + (f", rules {getattr(m, 'ruleset_name', None) or rules or 'default'}" if getattr(cls, "uses_rules", False) else "")
    echo(header)
    width = max([len(n.name or n.output[0]) for n in nodes] + [4])
    for n in nodes:
        name = n.name or n.output[0]
        if n.op_type in NON_DIFFERENTIABLE:
            what = "no relevance"
        elif name in why or engine.spec(n) is None:
            what = f"UNSUPPORTED ({why[name]})" if why.get(name) else "UNSUPPORTED"
        elif choices is not None:
            ch = choices.get(n.output[0])
            what = ch.describe() if ch is not None else "gradient"
            blk = getattr(m, "blocks", {}).get(n.output[0])
            if blk is not None and by_block:
                what = f"{what:<40} [{blk}]"  # why: the block type the rule was chosen for
        else:
            spec = engine.spec(n)
            what = f"backward: {getattr(spec.fn, '__name__', str(spec.fn))}"
        echo(f"  {name:<{width}}  {n.op_type:<20} {what}")
    kept = [d for d in g.canonicalization if not d.applied]
    if kept:
        echo(f"canonicalization: {len(g.canonicalization) - len(kept)} rewrites applied, {len(kept)} declined:")
        for d in kept:
            echo(f"  {d}")
    if bad:
        for node in bad:
            echo(f"unsupported: {node[0]} ({node[1]})" + (f": {node[2]}" if len(node) > 2 and node[2] else ""))
        raise UnsupportedOperatorsError(bad, where)
    return 0


def explainer_summary(path, echo) -> bool:
    """For an explainer (it has xcompile.* metadata): its method, parameters and self-check result; False otherwise."""
    import json
    from pathlib import Path

    import onnx
    p = Path(path)
    if not p.is_file():
        return False
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file: the normal path reports it
        return False
    from ..metadata import ExplainerMeta
    meta = ExplainerMeta.of_model(model)
    if not meta.method:
        return False
    echo(f"{path}: explainer, method {meta.method}, "
         f"params {json.dumps(meta.params, sort_keys=True)}")
    verify = meta.verify
    if verify is None:
        echo("self-check: not recorded (written before the self-check existed)")
    else:
        fields = ", ".join(f"{k} {verify[k]}" for k in ("check", "error", "tolerance", "directions", "steps", "band",
                                                       "rows", "note", "located") if k in verify)
        echo(f"self-check: {'passed' if verify.get('pass') else 'FAILED'} ({fields})")
    return True
