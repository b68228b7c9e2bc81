"""The ``key=value`` command lines (``anogan-predict``, ``anogan-serve``, ``anogan-export``): their
settings, declared once as dataclasses (type, default, allowed values), and their parsing.

Each argument is read with Hydra's override grammar (the syntax of ``anogan-train``'s overrides:
``key=value``, quoting with ``'...'``, ``null``, ``true``/``false``, ``[a,b]`` for a list key) and assigned
to the command's structured config, which checks the key exists and the value has its type; each
value is then checked against its field's rule (``anogan.config.fields``, as the Hydra config is).
A bad argument raises the caller's ``UserError`` subclass with one line naming it and the fix.

The defaults here belong to the command lines alone (no file of ``conf/`` holds these settings): a
run's own settings (the scorer, its thresholds, the preprocessing) come from its scorer file.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anogan.config.choices import DEVICES
from anogan.config.fields import (
    THRESHOLD_WORDS,
    Rule,
    among,
    find_problem,
    is_number,
    is_threshold,
    is_whole,
    refusal,
    settings,
    type_name,
    whole_rule,
)
from anogan.utils.errors import UserError


def option(default: Any, check: Rule | None = None) -> Any:
    """A command-line setting with its default and, optionally, its allowed values."""
    return field(default=default, metadata={"rule": check} if check is not None else {})


THRESHOLD = Rule(lambda v: v is None or is_threshold(v), THRESHOLD_WORDS)  # parse_threshold turns it into a name or a float
DEVICE = among(DEVICES, "use auto, cpu or cuda")
BATCH_SIZE = whole_rule(1, nullable=True)  # null: the run's mapping.batch_size
AT_LEAST_ONE = whole_rule(1)
SECONDS = Rule(lambda v: is_number(v) and v > 0, "use a number of seconds > 0")
SECONDS_OR_ZERO = Rule(lambda v: is_number(v) and v >= 0, "use a number of seconds >= 0")
PORT = Rule(lambda v: is_whole(v) and 1 <= v <= 65535, "use a whole number from 1 to 65535")


@dataclass
class PredictConfig:
    """``anogan-predict``'s settings (``anogan.cli.predict.USAGE``); MISSING: required."""

    ckpt: str = MISSING
    input: str = MISSING
    threshold: str | None = option(None, THRESHOLD)  # fpr | f1 | youden | a finite number; null: the run's rule
    out: str | None = None
    maps: bool = False
    save_images: bool = False
    device: str = option("auto", DEVICE)
    batch_size: int | None = option(None, BATCH_SIZE)  # null: the run's mapping.batch_size


@dataclass
class ServeConfig:
    """``anogan-serve``'s settings (``anogan.deploy.serve.USAGE``); MISSING: required."""

    ckpt: str = MISSING
    port: int = option(8000, PORT)
    host: str = "127.0.0.1"  # loopback only; 0.0.0.0 listens on every interface
    device: str = option("auto", DEVICE)
    threshold: str | None = option(None, THRESHOLD)  # the run's rule when null
    max_batch_size: int = option(32, AT_LEAST_ONE)  # requests scored together
    batch_timeout: float = option(0.01, SECONDS_OR_ZERO)  # seconds a batch waits to fill
    max_images: int = option(64, AT_LEAST_ONE)  # images in one request
    max_bytes: int = option(20_000_000, AT_LEAST_ONE)  # size of one request's body
    max_pixels: int = option(40_000_000, AT_LEAST_ONE)  # pixels of one image (checked before it is decoded)
    max_request_pixels: int = option(50_000_000, AT_LEAST_ONE)  # pixels of all the images of one request
    max_response_bytes: int = option(10_000_000, AT_LEAST_ONE)  # size of one answer (maps=full makes large ones)
    body_timeout: float = option(30.0, SECONDS)  # seconds to receive a request's whole body (408 after)
    drain_timeout: float = option(20.0, SECONDS)  # seconds the requests in flight get after SIGTERM/SIGINT (503 after)
    workers: int = option(1, AT_LEAST_ONE)  # inference processes
    timeout: float = option(300.0, SECONDS)  # seconds before a request is answered 504 (a long latent search needs time)


@dataclass
class ExportConfig:
    """``anogan-export``'s settings (``anogan.deploy.export``); MISSING: required."""

    ckpt: str = MISSING
    out: str | None = None  # null: <run folder>/export
    input: str | None = None  # images for the check; null: images made by the run's generator


def parse_key_values(argv: list[str], schema: type, usage: str, error: type[UserError]) -> DictConfig:
    """``argv`` (``key=value`` items) into a config of the dataclass ``schema``. ``-h``/``--help``/
    ``help`` print ``usage`` and exit 0. Raises ``error`` (one line, with ``usage``) for a malformed
    item, an unknown key, a list or sweep value, a value of the wrong type or outside its field's
    rule, or a required key (``MISSING`` in ``schema``) left out."""
    if any(item in ("-h", "--help", "help") for item in argv):
        print(usage)
        raise SystemExit(0)
    cfg = OmegaConf.structured(schema)
    declared = settings(schema)
    parser = OverridesParser.create()
    for item in argv:
        try:
            (override,) = parser.parse_overrides([item])
        except HydraException:
            raise error(f"cannot read argument {item!r}: write key=value. {usage}") from None
        key = override.key_or_group
        if key not in declared or override.package is not None or override.is_delete():
            raise error(f"unknown argument {item!r}. {usage}")
        value = override.value()
        takes_list = typing.get_origin(declared[key].kind) is list
        if override.is_sweep_override() or isinstance(value, dict) or (isinstance(value, list) and not takes_list):
            raise error(f"{item!r}: give one value (quote a value holding commas or brackets: {key}='...').")
        try:
            cfg[key] = value if value is None or isinstance(value, (bool, int, float, list)) else str(value)
        except OmegaConfBaseException:
            raise error(f"{item!r}: {key} takes {type_name(declared[key].kind)}.") from None
    problem = find_problem(cfg, schema)
    if problem is not None and problem.kind == "missing":
        raise error(f"{problem.key}=... is required. {usage}")
    if problem is not None:
        raise error(refusal(problem.key, problem.value, problem.allowed))
    return cfg
