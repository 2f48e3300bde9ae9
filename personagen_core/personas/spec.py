"""The generation spec: pydantic models of the versioned YAML file a user edits, plus packs.

A spec holds every distribution of stages 1-3 (attribute categories with items and probabilities,
conditional tables, whitelist rules, scenario elements and filters), the emotion label set and the
generation parameters. ``load_spec``/``parse_spec`` validate it and raise :class:`SpecError` naming the
offending field by its dotted path (``attributes.age.items[3].p``) and, for files, its line number.
``dump_spec`` writes a canonical YAML text: ``dump_spec(parse_spec(dump_spec(s))) == dump_spec(s)``.

YAML layout (version 1)::

    version: 1
    name: japan
    emotions: paper7                  # or carer6, or a list of {name, description}
    generation: {temperature: 1.2, max_sentences: 2, texts_per_persona: 1, max_tokens: 80,
                 max_chars: 300, max_words: 60}   # max_chars/max_words: length limit of one text
    attributes:                       # stage 1 and 2 categories, in order
      age:
        label: age group
        stage: 1
        source: where the figures come from
        template: 'aged {value}'      # phrase used by the renderer (optional)
        items:                        # the category's marginal distribution
        - {name: 6-12, p: 0.06}
      education:
        stage: 2
        given: [age]                  # conditional table: P(education | age)
        items: [...]
        table:                        # rows matched in order, first match wins; `when: {}` matches
        - when: {age: [6-12]}         # everything; unmatched parent values fall back to `items`
          items:                      # (items a row omits get probability 0)
          - {name: elementary school, p: 1.0}
    scenario: {...}                   # stage 3 elements, same shape as attributes (no `stage`)
    scenario_filters: {activity: [SNS posting]}   # restrict any category; the rest re-normalises
    rules:                            # whitelist rules, applied as masks before sampling
    - name: children do not work
      when: {age: [6-12]}             # all conditions hold (AND over keys, OR within a list)
      allow: {occupation: [elementary school student]}   # only these remain
      deny: {income: [...]}                               # these are removed

Probabilities must be non-negative and sum to 1 per list (within 1e-6) unless ``normalise=True``.
A category, its tables and the rules that restrict it may refer to categories defined later: sampling
follows the dependencies (see :mod:`personagen_core.personas.sampling`); cycles are errors.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from personagen_core.errors import SpecError

__all__ = [
    "DEFAULT_PACK",
    "EMOTION_SETS",
    "Category",
    "Emotion",
    "GenerationParams",
    "Item",
    "Rule",
    "Spec",
    "TableRow",
    "dump_spec",
    "list_packs",
    "load_pack",
    "load_spec",
    "pack_path",
    "parse_spec",
    "spec_hash",
    "with_filters",
]

DEFAULT_PACK = "japan"
SPEC_VERSION = 1
_SUM_TOL = 1e-6


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


def _scalar_str(v: Any) -> Any:
    """YAML reads ``2020`` or ``1.5`` as numbers; item names are strings."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return v


class Item(_Model):
    """One value of a category with its probability."""

    name: str = Field(min_length=1)
    p: float

    _name_str = field_validator("name", mode="before")(_scalar_str)

    @field_validator("p")
    @classmethod
    def _p_valid(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("probability must be a finite number")
        if v < 0:
            raise ValueError(f"probability must not be negative (got {v})")
        return v


def _as_list(v: Any) -> Any:
    """Let YAML say ``{age: child}`` for ``{age: [child]}`` (and ``{age: 2020}`` for ``{age: ['2020']}``)."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            x = _scalar_str(x)
            out[k] = [x] if isinstance(x, str) else [_scalar_str(e) for e in x] if isinstance(x, list) else x
        return out
    return v


class TableRow(_Model):
    """One row of a conditional table: the distribution of the category when the parents match."""

    when: dict[str, list[str]]
    items: list[Item] = Field(min_length=1)

    _norm_when = field_validator("when", mode="before")(_as_list)


class Category(_Model):
    """An attribute category or a scenario element."""

    label: str = ""
    stage: int = Field(default=1, ge=1, le=3)
    source: str = ""
    template: str = ""
    given: list[str] = Field(default_factory=list)
    items: list[Item] = Field(min_length=1)
    table: list[TableRow] = Field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Item names in order."""
        return [it.name for it in self.items]

    @property
    def probs(self) -> list[float]:
        """Item probabilities in order."""
        return [it.p for it in self.items]


class Rule(_Model):
    """A whitelist rule: when every ``when`` condition holds, restrict the targeted categories."""

    name: str = ""
    when: dict[str, list[str]] = Field(min_length=1)
    allow: dict[str, list[str]] = Field(default_factory=dict)
    deny: dict[str, list[str]] = Field(default_factory=dict)

    _norm = field_validator("when", "allow", "deny", mode="before")(_as_list)


class Emotion(_Model):
    """An emotion label with a one-line description used in prompts (immutable: presets are shared)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""


class GenerationParams(_Model):
    """Stage-4 generation parameters (paper: temperature 1.2, at most two sentences).

    ``max_chars`` and ``max_words`` bound one accepted text (longer outputs are rejected as ``too_long``);
    the defaults fit two short sentences.
    """

    temperature: float = Field(default=1.2, ge=0.0, le=2.0)
    max_sentences: int = Field(default=2, ge=1, le=10)
    texts_per_persona: int = Field(default=1, ge=1, le=100)
    max_tokens: int = Field(default=80, ge=8, le=4096)
    max_chars: int = Field(default=300, ge=20, le=20_000)
    max_words: int = Field(default=60, ge=3, le=4_000)


#: Generation fields added after version 1 was published: dumped only when set, so the dump (and the
#: spec hash) of a spec that leaves them at their defaults is what it was before they existed.
_LATE_GENERATION_FIELDS = ("max_chars", "max_words")


_EMOTION_DESCRIPTIONS: dict[str, str] = {
    "joy": "happiness or delight about something that happened",
    "anger": "irritation or rage at someone or something",
    "sadness": "sorrow, disappointment or a sense of loss",
    "pleasure": "comfort, enjoyment or satisfaction in the moment",
    "surprise": "astonishment at something unexpected",
    "fear": "worry, anxiety or fright about a threat",
    "neutral": "a matter-of-fact statement with no marked emotion",
    "love": "affection, warmth or care for someone or something",
}

EMOTION_SETS: dict[str, list[Emotion]] = {
    key: [Emotion(name=n, description=_EMOTION_DESCRIPTIONS[n]) for n in names]
    for key, names in {
        "paper7": ("joy", "anger", "sadness", "pleasure", "surprise", "fear", "neutral"),
        "carer6": ("sadness", "joy", "love", "anger", "fear", "surprise"),
    }.items()
}


class Spec(_Model):
    """A complete, validated generation spec (see the module docstring for the YAML layout)."""

    version: int = SPEC_VERSION
    name: str = Field(min_length=1)
    label: str = ""
    description: str = ""
    language: str = "en"
    emotions: list[Emotion] = Field(default_factory=lambda: list(EMOTION_SETS["paper7"]), min_length=1)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    attributes: dict[str, Category] = Field(min_length=1)
    scenario: dict[str, Category] = Field(default_factory=dict)
    scenario_filters: dict[str, list[str]] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    _norm_filters = field_validator("scenario_filters", mode="before")(_as_list)

    @field_validator("emotions", mode="before")
    @classmethod
    def _expand_emotion_set(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v not in EMOTION_SETS:
                raise ValueError(f"unknown emotion set {v!r}; known: {', '.join(EMOTION_SETS)}")
            return [e.model_dump() for e in EMOTION_SETS[v]]
        return v

    def categories(self) -> dict[str, Category]:
        """All categories of stages 1-3 in spec order (attributes, then scenario)."""
        return {**self.attributes, **self.scenario}

    def stage_columns(self, stage: int) -> list[str]:
        """Column names (category keys) of stage 1, 2 or 3."""
        if stage == 3:
            return list(self.scenario)
        return [k for k, c in self.attributes.items() if c.stage == stage]

    def category_path(self, key: str) -> str:
        """Dotted path of a category, e.g. ``attributes.age`` or ``scenario.activity``."""
        return f"attributes.{key}" if key in self.attributes else f"scenario.{key}"

    @property
    def emotion_names(self) -> list[str]:
        """The emotion labels in order."""
        return [e.name for e in self.emotions]


# ---------------------------------------------------------------------------------------------------
# Parsing and checks


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or its deepest existing ancestor)."""
    node = root
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def _check_probs(items: list[Item], path: str, normalise: bool) -> list[Item]:
    names = [it.name for it in items]
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise SpecError(f"duplicate item name {n!r}", f"{path}[{i}].name")
        seen.add(n)
    total = sum(it.p for it in items)
    if total <= 0:
        raise SpecError("every probability is zero: the category would be empty", path)
    if abs(total - 1.0) > _SUM_TOL:
        if not normalise:
            raise SpecError(
                f"probabilities sum to {total:.6g}, not 1; fix them or pass normalise=True "
                "(CLI: --normalise) to rescale them",
                path,
            )
        return [Item(name=it.name, p=it.p / total) for it in items]
    return items


def _check_refs(
    refs: dict[str, list[str]], cats: dict[str, Category], path: str, spec: Spec, what: str
) -> None:
    for key, values in refs.items():
        if key not in cats:
            raise SpecError(
                f"{what} names unknown category {key!r}; known: {', '.join(cats)}", f"{path}.{key}"
            )
        if not values:
            raise SpecError(f"{what} lists no item of {key!r}", f"{path}.{key}")
        known = set(cats[key].names)
        for i, v in enumerate(values):
            if v not in known:
                raise SpecError(
                    f"{what} names unknown item {v!r} of {spec.category_path(key)}", f"{path}.{key}[{i}]"
                )


def _validate(spec: Spec, normalise: bool) -> Spec:
    """Cross-field checks pydantic cannot express; returns the spec with probabilities normalised."""
    if spec.version != SPEC_VERSION:
        raise SpecError(
            f"unsupported spec version {spec.version}; this PersonaGen reads version 1", "version"
        )
    clash = set(spec.attributes) & set(spec.scenario)
    if clash:
        raise SpecError(
            f"category {sorted(clash)[0]!r} is both an attribute and a scenario element", "scenario"
        )
    for key, cat in spec.attributes.items():
        if cat.stage not in (1, 2):
            raise SpecError(
                "attribute categories have stage 1 or 2 (stage 3 is the scenario)", f"attributes.{key}.stage"
            )
    for cat in spec.scenario.values():
        cat.stage = 3
    cats = spec.categories()
    for key, cat in cats.items():
        path = spec.category_path(key)
        cat.items = _check_probs(cat.items, f"{path}.items", normalise)
        known = set(cat.names)
        for j, parent in enumerate(cat.given):
            if parent not in cats:
                raise SpecError(f"conditional table names unknown category {parent!r}", f"{path}.given[{j}]")
            if parent == key:
                raise SpecError("a category cannot be conditioned on itself", f"{path}.given[{j}]")
        if cat.template:
            try:
                cat.template.format(value="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise SpecError(
                    f"template must use only the placeholder {{value}} (problem: {exc!s})", f"{path}.template"
                ) from None
        if cat.table and not cat.given:
            raise SpecError("a conditional table needs `given: [parent, ...]`", f"{path}.given")
        for r, row in enumerate(cat.table):
            rpath = f"{path}.table[{r}]"
            for parent in row.when:
                if parent not in cat.given:
                    raise SpecError(
                        f"row conditions on {parent!r}, which is not in `given` {cat.given}",
                        f"{rpath}.when.{parent}",
                    )
            _check_refs(row.when, cats, f"{rpath}.when", spec, "conditional table")
            for i, it in enumerate(row.items):
                if it.name not in known:
                    raise SpecError(f"unknown item {it.name!r} of {path}", f"{rpath}.items[{i}].name")
            row.items = _check_probs(row.items, f"{rpath}.items", normalise)
    for r, rule in enumerate(spec.rules):
        rpath = f"rules[{r}]"
        _check_refs(rule.when, cats, f"{rpath}.when", spec, "rule")
        if not rule.allow and not rule.deny:
            raise SpecError("a rule needs `allow` or `deny`", rpath)
        for kind in ("allow", "deny"):
            targets = getattr(rule, kind)
            _check_refs(targets, cats, f"{rpath}.{kind}", spec, "rule")
            for key in targets:
                if key in rule.when:
                    raise SpecError(
                        f"a rule cannot restrict {key!r}, a category in its own `when`",
                        f"{rpath}.{kind}.{key}",
                    )
    _check_refs(spec.scenario_filters, cats, "scenario_filters", spec, "scenario filter")
    names = [e.name for e in spec.emotions]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise SpecError(f"duplicate emotion {n!r}", f"emotions[{i}].name")
    return spec


def _from_data(data: Any, *, normalise: bool, source: str, root: yaml.Node | None) -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a YAML mapping at top level (got {type(data).__name__})")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _format_loc(loc)
        line = _line_of(root, loc)
        where = f"{source}, line {line}" if line else source
        more = f" ({exc.error_count() - 1} more problem(s) after this one)" if exc.error_count() > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise SpecError(f"{msg} [{where}]{more}", path or None) from None
    try:
        return _validate(spec, normalise)
    except SpecError as exc:
        line = _line_of(root, _parse_path(exc.path)) if exc.path else None
        if line:
            raise SpecError(f"{exc.message} [{source}, line {line}]", exc.path) from None
        raise


def _parse_path(path: str) -> tuple[Any, ...]:
    out: list[Any] = []
    for part in path.split("."):
        head, *idx = part.split("[")
        if head:
            out.append(head)
        out.extend(int(i.rstrip("]")) for i in idx)
    return tuple(out)


def parse_spec(text: str, *, normalise: bool = False, source: str = "<string>") -> Spec:
    """Parse and validate a spec from YAML text; ``normalise`` rescales sums that are not 1."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"broken YAML at {where}: {problem}") from None
    finally:
        loader.dispose()
    return _from_data(data, normalise=normalise, source=source, root=root)


def load_spec(path: str | Path, *, normalise: bool = False) -> Spec:
    """Load and validate a spec file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec file {p}: {exc.strerror or exc}") from None
    return parse_spec(text, normalise=normalise, source=str(p))


# ---------------------------------------------------------------------------------------------------
# Canonical dump


def _items_out(items: list[Item]) -> list[dict[str, Any]]:
    return [{"name": it.name, "p": float(it.p)} for it in items]


def _category_out(cat: Category, *, scenario: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cat.label:
        out["label"] = cat.label
    if not scenario:
        out["stage"] = cat.stage
    if cat.source:
        out["source"] = cat.source
    if cat.template:
        out["template"] = cat.template
    if cat.given:
        out["given"] = list(cat.given)
    out["items"] = _items_out(cat.items)
    if cat.table:
        out["table"] = [
            {"when": {k: list(v) for k, v in r.when.items()}, "items": _items_out(r.items)} for r in cat.table
        ]
    return out


def _emotions_out(emotions: list[Emotion]) -> Any:
    for name, preset in EMOTION_SETS.items():
        if emotions == preset:
            return name
    return [{"name": e.name, "description": e.description} for e in emotions]


def _spec_out(spec: Spec) -> dict[str, Any]:
    out: dict[str, Any] = {"version": spec.version, "name": spec.name}
    if spec.label:
        out["label"] = spec.label
    if spec.description:
        out["description"] = spec.description
    out["language"] = spec.language
    out["emotions"] = _emotions_out(spec.emotions)
    gen = spec.generation.model_dump()
    for name in _LATE_GENERATION_FIELDS:
        if gen[name] == GenerationParams.model_fields[name].default:
            del gen[name]
    out["generation"] = gen
    out["attributes"] = {k: _category_out(c, scenario=False) for k, c in spec.attributes.items()}
    out["scenario"] = {k: _category_out(c, scenario=True) for k, c in spec.scenario.items()}
    out["scenario_filters"] = {k: list(v) for k, v in spec.scenario_filters.items()}
    rules = []
    for r in spec.rules:
        d: dict[str, Any] = {}
        if r.name:
            d["name"] = r.name
        d["when"] = {k: list(v) for k, v in r.when.items()}
        if r.allow:
            d["allow"] = {k: list(v) for k, v in r.allow.items()}
        if r.deny:
            d["deny"] = {k: list(v) for k, v in r.deny.items()}
        rules.append(d)
    out["rules"] = rules
    return out


# libyaml is ~10x faster than the pure-Python parser; both give the same documents.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_spec(spec: Spec) -> str:
    """Canonical YAML text of a spec: stable key order, one ``{name, p}`` item per line, lossless."""
    body = yaml.dump(
        _spec_out(spec),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=None,
        allow_unicode=True,
        width=1_000_000,
        indent=2,
    )
    return f"# PersonaGen spec, version {spec.version}\n{body}"


def with_filters(spec: Spec, filters: Mapping[str, str | Sequence[str]], *, replace: bool = False) -> Spec:
    """A validated copy of ``spec`` with scenario filters added (or all replaced when ``replace``).

    Filters restrict a category to a subset of its items, e.g. ``{"activity": ["posting on social media"]}``;
    the remaining probabilities re-normalise when sampling. Bad keys or items raise :class:`SpecError`.
    """
    merged: dict[str, list[str]] = {} if replace else {k: list(v) for k, v in spec.scenario_filters.items()}
    for key, values in filters.items():
        merged[key] = [values] if isinstance(values, str) else list(values)
    text = dump_spec(spec.model_copy(update={"scenario_filters": merged}))
    return parse_spec(text, source="scenario filters")


def spec_hash(spec: Spec) -> str:
    """sha256 hex digest of the canonical dump (identifies a spec in run stores and reports)."""
    return hashlib.sha256(dump_spec(spec).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Packs


def list_packs() -> list[str]:
    """Names of the shipped packs."""
    folder = resources.files("personagen_core.personas") / "packs"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def pack_path(name: str) -> Path:
    """File path of a shipped pack."""
    if name not in list_packs():
        raise SpecError(f"unknown pack {name!r}; shipped packs: {', '.join(list_packs())}")
    return Path(str(resources.files("personagen_core.personas") / "packs" / f"{name}.yaml"))


def load_pack(name: str = DEFAULT_PACK) -> Spec:
    """Load a shipped pack (``japan`` reproduces the paper, ``united_states`` shows another country)."""
    return load_spec(pack_path(name))
