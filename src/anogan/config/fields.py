"""Typed settings and the one check of values against them.

A setting is declared once, as a field of a dataclass schema: its type annotation says what kind of
value it holds, and :func:`rule` (or :func:`whole`, :func:`one_of`, ...) adds the range of values
allowed, with the words that say so. The same declarations check the composed Hydra config
(``anogan.config.schema.validate``), the settings a scorer file stores (``anogan.engine.artifact``)
and the ``key=value`` command lines (``anogan.config.arguments``), through :func:`find_problem`,
which returns the first :class:`Problem` of a mapping of values and leaves the wording of the
one-line message to its caller (a config key, an entry of a file, an argument).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from omegaconf import MISSING, DictConfig, ListConfig

from anogan.config.choices import THRESHOLD_RULES
from anogan.utils.errors import ThresholdRuleError

# A learning rate above this is refused: Adam moves every weight by up to lr per step, and the
# networks' weights are O(0.01-1), so lr > 1 can only blow up (the recipes use 1e-4 to 1e-3).
MAX_LR = 1.0


@dataclass(frozen=True)
class Rule:
    """The allowed values of one setting: ``ok(value)`` and the words that say what is allowed."""

    ok: Callable[[Any], bool]
    allowed: str


@dataclass(frozen=True)
class Setting:
    """One declared setting: ``kind`` (a type annotation: ``int``, ``str | None``, ``list[float]``, a
    dataclass schema, a class such as ``torch.Tensor``) and its :class:`Rule`, if any."""

    kind: Any
    rule: Rule | None = None


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a mapping of values: ``key`` (dotted, with the caller's prefix),
    ``kind`` (``missing``, ``type``, ``value`` or ``unknown``), the value found, what is allowed
    (a type's words or a rule's), and for an unknown key the keys its node does have."""

    key: str
    kind: str
    value: Any = None
    allowed: str = ""
    known: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------- rules
def declare(check: Rule) -> Any:
    """A dataclass field with the rule ``check`` and no default: its value comes from ``conf/``."""
    return field(default=MISSING, metadata={"rule": check})


def rule(ok: Callable[[Any], bool], allowed: str) -> Any:
    """A schema field whose values must pass ``ok``; ``allowed`` completes the message
    "<key>=<value> is not allowed: <allowed>."."""
    return declare(Rule(ok, allowed))


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def whole_rule(low: int, nullable: bool = False) -> Rule:
    return Rule(
        lambda v: (nullable and v is None) or (is_whole(v) and v >= low),
        f"use {'null or ' if nullable else ''}a whole number >= {low}",
    )


def whole(low: int, nullable: bool = False) -> Any:
    return declare(whole_rule(low, nullable))


def fraction(allowed: str = "use a fraction strictly between 0 and 1") -> Any:
    return rule(lambda v: is_number(v) and 0.0 < v < 1.0, allowed)


def non_negative(allowed: str = "use a number >= 0") -> Any:
    return rule(lambda v: is_number(v) and v >= 0, allowed)


def learning_rate() -> Any:
    return rule(
        lambda v: is_number(v) and 0 < v <= MAX_LR,
        f"use a positive learning rate <= {MAX_LR:g} (the recipes use 1e-4 to 1e-3; larger steps diverge)",
    )


def among(choices: tuple, allowed: str | None = None) -> Rule:
    return Rule(lambda v: v in choices, allowed or f"use one of {', '.join(map(str, choices))}")


def one_of(choices: tuple, allowed: str | None = None) -> Any:
    return declare(among(choices, allowed))


def refusal(key: str, value: object, allowed: str) -> str:
    """The one line for a value outside its rule: ``<key>=<value!r>: <allowed>``."""
    return f"{key}={value!r}: {allowed}"


def check(key: str, value: object, allowed: Rule, error: type[Exception]) -> None:
    """Raise ``error`` (the :func:`refusal` line) unless ``allowed`` accepts ``value``."""
    if not allowed.ok(value):
        raise error(refusal(key, value, allowed.allowed))


# ---------------------------------------------------------------------------------- threshold
THRESHOLD_WORDS = f"use {', '.join(THRESHOLD_RULES)} or a finite number"


def parse_threshold(value: object) -> str | float:
    """A threshold as the user gives it: a rule's name (``fpr``, ``f1``, ``youden``; any case,
    spaces around) or a finite number (an int, a float, or a string that parses as one). Returns the
    name lower-cased or the number as a float. Raises ``ThresholdRuleError`` (one line:
    "threshold=<value>: use fpr, f1, youden or a finite number") for anything else, NaN and
    infinities included."""
    number = math.nan
    if isinstance(value, str):
        text = value.strip().lower()
        if text in THRESHOLD_RULES:
            return text
        with contextlib.suppress(ValueError):  # not a number: NaN, refused below
            number = float(text)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if not math.isfinite(number):
        raise ThresholdRuleError(refusal("threshold", value, THRESHOLD_WORDS))
    return number


def is_threshold(value: object) -> bool:
    """Whether :func:`parse_threshold` accepts ``value``."""
    try:
        parse_threshold(value)
    except ThresholdRuleError:
        return False
    return True


# ------------------------------------------------------------------------------ declarations
def settings(schema: type, names: typing.Iterable[str] | None = None) -> dict[str, Setting]:
    """The declared settings of the dataclass ``schema`` (all its fields, or ``names`` in that order)."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    return {name: Setting(hints[name], fields[name].metadata.get("rule")) for name in (names or fields)}


def setting(schema: type, name: str) -> Setting:
    """One declared setting of the dataclass ``schema``."""
    return settings(schema, [name])[name]


def _declared(spec: type | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, Mapping):
        return dict(spec)
    return dict(settings(spec))


# ------------------------------------------------------------------------------------- types
def _parts(kind: Any) -> tuple[Any, ...]:
    if isinstance(kind, tuple):
        return kind
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return (kind,)


def _is_mapping_kind(kind: Any) -> bool:
    base = typing.get_origin(kind) or kind
    return base in (dict, Mapping) or (isinstance(base, type) and dataclasses.is_dataclass(base))


def has_type(value: object, kind: Any) -> bool:
    """Whether ``value`` is of the declared ``kind``: a bool is never a number, an int is a float, a
    list may be a tuple or an OmegaConf list (its items checked), a mapping a dict or a config node."""
    for part in _parts(kind):
        base = typing.get_origin(part) or part
        if part is Any or (part in (None, type(None)) and value is None):
            return True
        if base in (bool, int, float):
            if isinstance(value, bool) and base is bool:
                return True
            if not isinstance(value, bool) and base is not bool and isinstance(value, int if base is int else (int, float)):
                return True
        elif base in (list, tuple):
            items = typing.get_args(part)
            if isinstance(value, (list, tuple, ListConfig)) and all(has_type(v, items[0] if items else Any) for v in value):
                return True
        elif _is_mapping_kind(part):
            if isinstance(value, (dict, DictConfig)):
                return True
        elif isinstance(base, type) and isinstance(value, base):
            return True
    return False


def type_name(kind: Any) -> str:
    """What ``kind`` allows, in words: "a whole number", "null or a string", "a number", ..."""
    parts = _parts(kind)
    if float in parts:
        parts = tuple(p for p in parts if p is not int)
    words = []
    for part in sorted(parts, key=lambda p: p not in (None, type(None))):
        base = typing.get_origin(part) or part
        if part is Any:
            return "any value"
        if part in (None, type(None)):
            words.append("null")
        elif base in (bool, int, float, str):
            words.append({bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[base])
        elif base in (list, tuple):
            words.append("a list")
        elif _is_mapping_kind(part):
            words.append("a mapping")
        else:
            words.append(f"a {getattr(base, '__name__', str(base)).lower()}")
    return " or ".join(dict.fromkeys(words))


# ---------------------------------------------------------------------------------- checking
def _raw_interpolation(values: Mapping, key: str) -> bool:
    """A config value that is an interpolation (``${...}``): its type is OmegaConf's to check when
    it resolves (some resolve only inside a Hydra job)."""
    return isinstance(values, DictConfig) and values._get_node(key)._is_interpolation()  # type: ignore[union-attr]


def find_problem(values: Mapping, spec: type | Mapping[str, Any], where: str = "") -> Problem | None:
    """The first problem of ``values`` against ``spec`` (a dataclass schema, or a mapping of keys to
    a type annotation, a :class:`Setting`, a nested mapping or a nested dataclass schema), else None.

    In the declared order, each key must be present (a config's ``???`` is absent), of its type,
    and allowed by its rule; nested mappings are checked in turn; then no other key may be present.
    ``where`` prefixes every key named (``"mapping."``, ``"scorer.hparams."``).
    """
    declared = _declared(spec)
    for key, decl in declared.items():
        name = f"{where}{key}"
        if key not in values:
            return Problem(name, "missing")
        check = decl if isinstance(decl, Setting) else Setting(decl)
        nested: type | Mapping[str, Any] | None = None
        if isinstance(check.kind, Mapping) or (isinstance(check.kind, type) and dataclasses.is_dataclass(check.kind)):
            nested = check.kind
        if check.rule is None and nested is None and _raw_interpolation(values, key):
            continue
        value = values[key]
        if nested is not None:
            if not isinstance(value, (dict, DictConfig)):
                return Problem(name, "type", value, "a mapping")
            problem = find_problem(value, nested, f"{name}.")
            if problem is not None:
                return problem
        elif not has_type(value, check.kind):
            return Problem(name, "type", value, type_name(check.kind))
        elif check.rule is not None and not check.rule.ok(value):
            return Problem(name, "value", value, check.rule.allowed)
    unknown = [str(k) for k in values if k not in declared]
    if unknown:
        return Problem(f"{where}{unknown[0]}", "unknown", values[unknown[0]], known=tuple(declared))
    return None


def describe(problem: Problem) -> str:
    """The one-line message for a config key's problem, naming the key and the fix."""
    if problem.kind == "missing":
        return f"{problem.key} has no value. Fix: set it in its conf/ file or on the command line ({problem.key}=...)."
    if problem.kind == "unknown":
        parent, _, name = problem.key.rpartition(".")
        close = difflib.get_close_matches(name, problem.known, n=1)
        hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
        return (
            f"{problem.key} is not a setting: nothing reads it{hint}. Fix: check the spelling against conf/ "
            "(a +key=value override adds a new key; key=value changes an existing one)."
        )
    return f"{problem.key}={problem.value!r} is not allowed: {problem.allowed}."
