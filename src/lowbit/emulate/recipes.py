"""Recipes: which formats a model transform uses, and where.

A :class:`Recipe` is a frozen value, like a format: weight and activation formats for
``nn.Linear`` layers, optional formats for the attention operands (QK^T and PV), the
SemanticDialect activation policies (:class:`~lowbit.emulate.semantic.Decomposition`,
:class:`~lowbit.emulate.semantic.SeDA`) and a :class:`LayerPolicy` saying which layers
are quantized. Recipes are registered through the ``register_recipes`` hook (the
built-ins in :mod:`lowbit.plugins.builtin_recipes`) and looked up by name.

The layer policy decides per module name: an exact name beats a regex (``re.search``,
first match wins), which beats the default. The default policy keeps in full precision
what DiT quantization work keeps there: patch/position/time/text embedders and
condition embedders, the AdaLN modulation linears (``norm*.linear``) and the final
norm and output projection.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Mapping, Union

import attrs

from lowbit.emulate.scaled import INT8, Scaling
from lowbit.emulate.semantic import Decomposition, SeDA, check_regex
from lowbit.emulate.sixbit import SixBit
from lowbit.registry import UnknownNameError, registry

__all__ = [
    "DEFAULT_KEEP",
    "FROM_RECIPE",
    "Keep",
    "LayerPolicy",
    "Quantize",
    "Recipe",
    "get_recipe",
    "recipes",
    "resolve_recipe",
]

#: A :class:`Quantize` field holding this takes the recipe's format for that operand.
FROM_RECIPE = "recipe"


def _optional_name(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{type(instance).__name__}.{attribute.name} must be a format name or None, got {value!r}")


@attrs.frozen
class Keep:
    """Keep the layer in full precision; ``reason`` is shown in reports."""

    reason: str = "kept in full precision"


@attrs.frozen(kw_only=True)
class Quantize:
    """Quantize the layer. Each field is a format name, None (that operand stays in full
    precision) or :data:`FROM_RECIPE` (the recipe's format). ``weight``/``activation``
    apply to linears, ``qk``/``pv`` to attention modules."""

    weight: str | None = attrs.field(default=FROM_RECIPE, validator=_optional_name)
    activation: str | None = attrs.field(default=FROM_RECIPE, validator=_optional_name)
    qk: str | None = attrs.field(default=FROM_RECIPE, validator=_optional_name)
    pv: str | None = attrs.field(default=FROM_RECIPE, validator=_optional_name)


#: A layer-policy rule.
Rule = Union[Keep, Quantize]


def _rule_pairs(value: Any) -> tuple[tuple[str, Rule], ...]:
    pairs = tuple((str(key), rule) for key, rule in (value.items() if isinstance(value, Mapping) else value))
    for key, rule in pairs:
        if not isinstance(rule, (Keep, Quantize)):
            raise TypeError(f"the layer-policy rule for {key!r} must be a Keep or a Quantize, got {rule!r}")
    return pairs


def _pattern_pairs(value: Any) -> tuple[tuple[str, Rule], ...]:
    pairs = _rule_pairs(value)
    for pattern, _ in pairs:
        check_regex(pattern, "layer-policy pattern")
    return pairs


# Module-name patterns of the diffusers video DiTs (Wan, HunyuanVideo, CogVideoX, LTX,
# Mochi, Latte, Flux / Open-Sora 2.0). Embedders and the final layer are matched only
# outside numbered blocks (every component before the name is an identifier), so a
# block's own ``proj_out`` (Flux single-stream blocks) stays quantized while a model
# nested in a wrapper (``transformer.proj_out``) is still covered.
_OUTSIDE_BLOCKS = r"^(?:[A-Za-z_]\w*\.)*"
DEFAULT_KEEP: tuple[tuple[str, Rule], ...] = (
    (
        _OUTSIDE_BLOCKS + r"(patch_embedding|patch_embed|pos_embed|x_embedder|proj_in|context_embedder"
        r"|condition_embedder|time_text_embed|time_embed|time_embedding|adaln_single|caption_projection)(\.|$)",
        Keep("embedder / timestep, text or condition projection"),
    ),
    (r"(^|\.)norm\w*\.linear(_\d+)?$", Keep("AdaLN modulation linear")),
    (_OUTSIDE_BLOCKS + r"(norm_out|proj_out)(\.|$)", Keep("final norm / output layer")),
)


@attrs.frozen(kw_only=True)
class LayerPolicy:
    """Which modules are quantized, by name: ``exact`` names, then ``patterns`` (regexes,
    ``re.search``, first match wins), then ``default``. ``exact`` and ``patterns`` take a
    mapping or (key, rule) pairs and are stored as pairs (so the policy is hashable).
    Exact names are full module paths; ``apply`` warns about one that names no
    ``nn.Linear`` or attention module of the model (the rule would do nothing)."""

    exact: tuple[tuple[str, Rule], ...] = attrs.field(default=(), converter=_rule_pairs)
    patterns: tuple[tuple[str, Rule], ...] = attrs.field(default=DEFAULT_KEEP, converter=_pattern_pairs)
    default: Rule = attrs.field(factory=Quantize, validator=attrs.validators.instance_of((Keep, Quantize)))

    def rule_for(self, name: str) -> tuple[Rule, str]:
        """The rule for module ``name`` and which part of the policy chose it."""
        exact = dict(self.exact)
        if name in exact:
            return exact[name], f"exact name {name!r}"
        for pattern, rule in self.patterns:
            if re.search(pattern, name):
                return rule, f"pattern {pattern!r}"
        return self.default, "default"

    def with_rules(self, exact: Mapping[str, Rule] | None = None, patterns: Any = ()) -> LayerPolicy:
        """This policy with more exact rules and with ``patterns`` tried before its own."""
        merged = {**dict(self.exact), **dict(exact or {})}
        return attrs.evolve(self, exact=merged, patterns=(*_pattern_pairs(patterns), *self.patterns))


@attrs.frozen(kw_only=True)
class Recipe:
    """A model transform: formats per operand, activation policies and a layer policy.

    ``weight``/``activation``: formats of ``nn.Linear`` weights (quantized once, blocks
    along the input features) and inputs (every forward, blocks along the last axis).
    ``qk``/``pv``: attention-operand formats (None: off). ``decomposition`` and
    ``assignment``: the SemanticDialect activation policies (see docs/semantic.md).
    ``scaling``: INT8 weights and activations scaled over whole axes, with static
    scales and SmoothQuant when asked (:mod:`lowbit.emulate.scaled`; weight and
    activation must then be ``int8``). ``six_bit``: per-block INT8 or ``activation``
    activations and the temporal delta cache (:mod:`lowbit.emulate.sixbit`).
    """

    name: str
    weight: str | None = attrs.field(default=None, validator=_optional_name)
    activation: str | None = attrs.field(default=None, validator=_optional_name)
    qk: str | None = attrs.field(default=None, validator=_optional_name)
    pv: str | None = attrs.field(default=None, validator=_optional_name)
    decomposition: Decomposition | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Decomposition))
    )
    assignment: SeDA | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(SeDA))
    )
    scaling: Scaling | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Scaling))
    )
    six_bit: SixBit | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(SixBit))
    )
    layers: LayerPolicy = attrs.field(factory=LayerPolicy, validator=attrs.validators.instance_of(LayerPolicy))
    description: str = ""

    @property
    def semantic(self) -> bool:
        """Whether an activation policy (decomposition or SeDA) is on."""
        return self.decomposition is not None or self.assignment is not None

    @property
    def needs_calibration(self) -> bool:
        """Whether :func:`lowbit.emulate.calibrate` must run before the first forward."""
        return self.six_bit is not None or (self.scaling is not None and self.scaling.needs_calibration)

    def format_names(self) -> set[str]:
        """Every format name the recipe and its layer policy refer to."""
        names = {self.weight, self.activation, self.qk, self.pv}
        if self.decomposition is not None:
            names.add(self.decomposition.residual_format)
        rules = [*(r for _, r in (*self.layers.exact, *self.layers.patterns)), self.layers.default]
        for rule in rules:
            if isinstance(rule, Quantize):
                names |= {rule.weight, rule.activation, rule.qk, rule.pv}
        return {n for n in names if n is not None and n != FROM_RECIPE}

    def check(self) -> Recipe:
        """Raise ValueError for an unknown format or a policy without an activation format."""
        table = registry().formats
        unknown = sorted(n for n in self.format_names() if n not in table.items)
        if unknown:
            raise ValueError(
                f"recipe {self.name!r} names unknown format(s) {', '.join(map(repr, unknown))}; "
                f"registered formats: {', '.join(table.items)}"
            )
        if self.semantic and self.activation is None:
            raise ValueError(f"recipe {self.name!r} has a decomposition or SeDA policy but no activation format")
        schemes = [k for k, on in (("semantic policies", self.semantic), ("scaling", self.scaling is not None),
                                   ("six_bit", self.six_bit is not None)) if on]  # fmt: skip
        if len(schemes) > 1:
            raise ValueError(f"recipe {self.name!r} combines {' and '.join(schemes)}; a recipe takes one of them")
        if self.scaling is not None and (self.weight, self.activation) != (INT8, INT8):
            raise ValueError(
                f"recipe {self.name!r}: scaling needs weight and activation {INT8!r}, "
                f"got {self.weight!r} and {self.activation!r}"
            )
        if self.six_bit is not None and (self.weight is None or self.activation is None):
            raise ValueError(f"recipe {self.name!r}: six_bit needs a weight and an activation format")
        return self


    def to_dict(self) -> dict[str, Any]:
        """The whole recipe as JSON-able data (:meth:`from_dict` reads it back to an equal value)."""
        layers = self.layers
        return {
            **{f.name: getattr(self, f.name) for f in attrs.fields(Recipe)},
            "decomposition": None if self.decomposition is None else attrs.asdict(self.decomposition),
            "assignment": None if self.assignment is None else attrs.asdict(self.assignment),
            "scaling": None if self.scaling is None else attrs.asdict(self.scaling),
            "six_bit": None if self.six_bit is None else attrs.asdict(self.six_bit),
            "layers": {
                "exact": [[name, _rule_dict(rule)] for name, rule in layers.exact],
                "patterns": [[pattern, _rule_dict(rule)] for pattern, rule in layers.patterns],
                "default": _rule_dict(layers.default),
            },
        }

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """The recipe :meth:`to_dict` wrote; ValueError naming the first unknown, missing or bad field."""
        fields = _checked_fields(cls, data, "recipe")
        seda = fields["assignment"]
        if isinstance(seda, dict) and "per_position" not in seda:  # written before SeDA.per_position: lists per token
            fields = {**fields, "assignment": {**seda, "per_position": False}}
        layers = _checked_fields(LayerPolicy, fields["layers"], "recipe layers")
        try:
            pairs = {key: [(str(k), _rule_from(r)) for k, r in layers[key]] for key in ("exact", "patterns")}
        except (TypeError, ValueError) as exc:  # not [name, rule] pairs
            raise ValueError(f"recipe layers: {exc}") from None
        policy = _build(LayerPolicy, {**pairs, "default": _rule_from(layers["default"])}, "recipe layers")
        policies = {
            key: None if fields[key] is None else _build(kind, _checked_fields(kind, fields[key], key), key)
            for key, kind in (("decomposition", Decomposition), ("assignment", SeDA), ("scaling", Scaling), ("six_bit", SixBit))
        }
        return _build(cls, {**fields, **policies, "layers": policy}, "recipe")


def _rule_dict(rule: Rule) -> dict[str, Any]:
    """A layer-policy rule as JSON-able data: ``{"keep": {...}}`` or ``{"quantize": {...}}``."""
    return {"keep" if isinstance(rule, Keep) else "quantize": attrs.asdict(rule)}


def _rule_from(data: Any) -> Rule:
    """The rule :func:`_rule_dict` wrote."""
    kinds: dict[str, type[Keep] | type[Quantize]] = {"keep": Keep, "quantize": Quantize}
    if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in kinds:
        raise ValueError(f"a layer-policy rule must be {{'keep': {{...}}}} or {{'quantize': {{...}}}}, got {data!r}")
    ((key, fields),) = data.items()
    return _build(kinds[key], _checked_fields(kinds[key], fields, f"{key} rule"), f"{key} rule")


def _checked_fields(cls: type, data: Any, what: str) -> dict[str, Any]:
    """``data`` when it is a dict holding exactly the fields of attrs class ``cls``."""
    names = [f.name for f in attrs.fields(cls)]
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a dict of {', '.join(names)}, got {type(data).__name__}")
    unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
    if unknown or missing:
        problem = f"unknown field(s) {', '.join(map(repr, unknown))}" if unknown else f"missing field(s) {', '.join(map(repr, missing))}"
        raise ValueError(f"{what}: {problem}; it has {', '.join(names)}")
    return data


def _build(cls: type, fields: dict[str, Any], what: str) -> Any:
    """``cls(**fields)``, its validators' TypeError or ValueError as a ValueError naming ``what``."""
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: {exc}") from None


def recipes() -> dict[str, Recipe]:
    """Every registered recipe by name, in registration order."""
    return dict(registry().recipes.items)


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``; ValueError listing the registered ones otherwise."""
    try:
        return registry().recipes.get(name)
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from None


def resolve_recipe(
    recipe: Recipe | str, overrides: Mapping[str, Any], *, caller: Callable[..., Any] | None = None
) -> Recipe:
    """A checked recipe from a name or value, with ``overrides`` replacing fields.

    ``caller``: the function whose ``**overrides`` these are (``apply``); the error for an
    unknown field also lists its keyword-only parameters, since a misspelt one of them
    (``stat=False``) lands in the overrides."""
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    elif not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe or a registered recipe name, got {type(recipe).__name__}")
    fields = [f.name for f in attrs.fields(Recipe)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        message = f"unknown recipe field(s) {', '.join(map(repr, unknown))}; a Recipe has {', '.join(fields)}"
        if caller is not None:
            keywords = [p.name for p in inspect.signature(caller).parameters.values() if p.kind is p.KEYWORD_ONLY]
            message += f"; {caller.__name__}() itself takes the keyword arguments {', '.join(keywords)}"
        raise ValueError(message)
    return attrs.evolve(recipe, **overrides).check() if overrides else recipe.check()
