"""THE explainer metadata record: what the compiler knew that a run needs (the method and its options, the explained
input and scores, token-input facts, the rule set's conservation band), written into the ONNX file as
``xcompile.<field>`` metadata_props and read back here only. The ``xcompile.`` prefix lives in this module alone;
every reader (runtime/explainer.py, evaluate/axioms.py, lrp/rulesets.py, visualize.py) gets an `ExplainerMeta`,
whether the explainer came from a file, a ModelProto or an API caller's `compile()` result."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional

PREFIX = "xcompile."


@dataclass
class ExplainerMeta:
    xcompile_version: str = ""
    method: str = ""
    params: dict = field(default_factory=dict)      # the method's options and the common ones that were set
    data_input: str = ""                            # the model input the user gives (token ids for a token model)
    score_output: str = ""
    explained: str = ""                             # the tensor explained (the logits before a trailing softmax)
    inputs: list = field(default_factory=list)
    token_input: bool = False
    embedding: Optional[str] = None                 # token models: the embedding tensor E that is explained
    vocab: Optional[int] = None
    baseline_token: Optional[int] = None
    token_relevance: Optional[str] = None
    band: Optional[list] = None                     # LRP: [low, high] of sum(relevance) / score the rule set keeps
    special_tokens: Optional[list] = None           # token ids the model compares its input with (load/probe.py)
    verify: Optional[dict] = None                   # the compile-time self-check's result (xcompile/verify)
    class_names: Optional[list] = None              # the source model's class names (`source_class_names`)
    extra: dict = field(default_factory=dict)       # other xcompile.* keys as written (strings), for their readers

    def __post_init__(self):
        if isinstance(self.class_names, str):  # written as a comma-separated string
            self.class_names = [c.strip() for c in self.class_names.split(",")]

    @property
    def explains_probabilities(self) -> bool:
        """The score output is a softmax of what is explained (its logits)."""
        return bool(self.explained) and self.explained != self.score_output

    def as_dict(self) -> dict:
        return asdict(self)

    def write(self, model) -> None:
        """Append the record to an onnx ModelProto's metadata_props (strings as they are, the rest as JSON; fields
        left at None are not written)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for name, v in sorted({**self.extra, **values}.items()):
            if v is None:
                continue
            p = model.metadata_props.add()
            p.key, p.value = PREFIX + name, v if isinstance(v, str) else json.dumps(v, sort_keys=True)

    @classmethod
    def read(cls, props: Mapping[str, str]) -> "ExplainerMeta":
        """From {key: value} (onnxruntime's custom_metadata_map, or a ModelProto's metadata_props as a dict): the
        ``xcompile.*`` entries; string fields are kept as written, the others JSON-decoded; other keys in `extra`."""
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        given: dict[str, Any] = {"extra": {}}
        for k, v in props.items():
            if not k.startswith(PREFIX):
                continue
            name = k[len(PREFIX):]
            if name not in known:
                given["extra"][name] = v
                continue
            if known[name].type in ("str", "Optional[str]", str):
                given[name] = v
                continue
            try:
                given[name] = json.loads(v)
            except (ValueError, TypeError):
                given[name] = v
        return cls(**given)

    @staticmethod
    def record(model, **values) -> None:
        """Set fields of the record already written into `model` (a later stage's result: the self-check's)."""
        for name, v in values.items():
            value = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            prop = next((p for p in model.metadata_props if p.key == PREFIX + name), None)
            if prop is None:
                prop = model.metadata_props.add()
                prop.key = PREFIX + name
            prop.value = value

    @classmethod
    def of_model(cls, model) -> "ExplainerMeta":
        return cls.read({p.key: p.value for p in model.metadata_props})

    @classmethod
    def of_session(cls, session) -> "ExplainerMeta":
        return cls.read(session.get_modelmeta().custom_metadata_map)


def source_class_names(model) -> Optional[list]:
    """The source model's own class names (its metadata ``class_names`` / ``classes`` / ``labels``: a JSON list or a
    comma-separated string), kept so that `xcompile run` prints them; None if absent."""
    props = {p.key: p.value for p in model.metadata_props}
    raw = next((props[k] for k in ("class_names", "classes", "labels") if props.get(k)), None)
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = [s.strip() for s in raw.split(",")]
    return [str(n) for n in names] if isinstance(names, list) and len(names) <= 1_000_000 else None
