"""``key=value`` command lines (``anogan-predict``, ``anogan-serve``), parsed by libraries, not by hand.

Each argument is read with Hydra's override grammar (the syntax of ``anogan-train``'s overrides:
``key=value``, quoting with ``'...'``, ``null``, ``true``/``false``, ``[a,b]`` for a list key) and assigned to a structured
config (an OmegaConf dataclass schema) that checks the key exists and the value has its type. A
bad argument raises the caller's ``UserError`` subclass with one line naming it and the usage.
"""

from __future__ import annotations

import dataclasses
import typing

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anogan.utils.errors import UserError


def parse_key_values(argv: list[str], schema: type, usage: str, error: type[UserError]) -> DictConfig:
    """``argv`` (``key=value`` items) into a config of the dataclass ``schema``. ``-h``/``--help``/
    ``help`` print ``usage`` and exit 0. Raises ``error`` (one line, with ``usage``) for a malformed
    item, an unknown key, a list or sweep value, a value of the wrong type, or a required key
    (``MISSING`` in ``schema``) left out."""
    if any(item in ("-h", "--help", "help") for item in argv):
        print(usage)
        raise SystemExit(0)
    cfg = OmegaConf.structured(schema)
    keys = {f.name for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    parser = OverridesParser.create()
    for item in argv:
        try:
            (override,) = parser.parse_overrides([item])
        except HydraException:
            raise error(f"cannot read argument {item!r}: write key=value. {usage}") from None
        key = override.key_or_group
        if key not in keys or override.package is not None or override.is_delete():
            raise error(f"unknown argument {item!r}. {usage}")
        value = override.value()
        takes_list = typing.get_origin(hints[key]) is list
        if override.is_sweep_override() or isinstance(value, dict) or (isinstance(value, list) and not takes_list):
            raise error(f"{item!r}: give one value (quote a value holding commas or brackets: {key}='...').")
        try:
            cfg[key] = value if value is None or isinstance(value, (bool, int, float, list)) else str(value)
        except OmegaConfBaseException:
            kind = next(f.type for f in dataclasses.fields(schema) if f.name == key)
            raise error(f"{item!r}: {key} takes {_type_name(kind)}.") from None
    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            raise error(f"{key}=... is required. {usage}")
    return cfg


def _type_name(kind: object) -> str:
    text = str(kind)
    if "bool" in text:
        return "true or false"
    if "int" in text:
        return "a whole number"
    if "float" in text:
        return "a number"
    return "a string"
