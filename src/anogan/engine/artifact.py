"""One self-contained scorer file (``<run>/scorer.pt``): everything needed to score new images.

It holds the networks (G, D and any encoder) with their architecture, the scorer's class and
settings, the preprocessing (image size, channels, resize policy), the precision the run scored
in, and the calibration fitted on the run's validation split only (``anogan.post_processing.calibration``): the
resolved correction, the thresholds of every rule, the validation normals' scores (for conformal
p-values) and any component combination. It never points into the GAN cache or to other files, so
``predict.py``, ``anogan-export`` and ``gan.checkpoint`` work with this one file, wherever it is copied.

Written atomically (temp file in the same folder, then rename); read with ``weights_only=True``
(plain tensors, numbers and strings: no code is unpickled).

Schema, format version 2 (``SCHEMA``; docs/reliability.md). Loading checks the whole file before
anything is built: every entry present with its type, no unknown entry, each setting of the run
(the architecture, the preprocessing, the calibration's rule, the scorer's settings) of its type and
allowed by the same declarations that check the configuration (``anogan.config``; none missing: a
setting the run had never falls back to a class default), the networks' state dicts complete and of
the right shapes. Any problem is one
``ArtifactError`` line naming the entry and the fix (exit code 2 from the command lines).
Version 1 files (anogan before the calibration module) load through ``migrate_v1``: the same
entries, with the calibration's threshold details and ``combine`` added (see there); a newer
version than this code knows is refused naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import math
import os
import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anogan.config.choices import DOWNSCALES, RESOLVED_CORRECTIONS
from anogan.config.data_schema import DataCommon, FolderData
from anogan.config.fields import (
    THRESHOLD_WORDS,
    Problem,
    Rule,
    Setting,
    among,
    find_problem,
    has_type,
    is_threshold,
    parse_threshold,
    setting,
    settings,
)
from anogan.config.gan_options import Model
from anogan.config.schema import Threshold
from anogan.config.scorer_schema import scorer_settings
from anogan.engine.gan_store import ARCH_DEFAULTS, ARCH_KEYS, build_networks, check_arch, load_checkpoint
from anogan.post_processing.calibration import THRESHOLD_KEYS, Calibration
from anogan.utils.errors import ArtifactError, UserError

if TYPE_CHECKING:
    from anogan.models.dcgan import Discriminator, Generator
    from anogan.scorers.base import Scorer

FORMAT = "anogan-scorer"
VERSION = 2
FILENAME = "scorer.pt"
# entry -> its declaration: a type, a nested schema (a dict of its own entries), or a setting of the
# run's configuration, declared once in anogan.config (type and allowed values: anogan.config.fields)
SCHEMA = {
    "format": str,
    "version": int,
    "scorer": {"target": str, "hparams": dict},  # hparams: the scorer's schema (_check_hparams)
    "gan_arch": settings(Model, ARCH_KEYS),  # the architecture: model.* (channels, image_size: data.*)
    "state_dict": dict,
    "calibration": {
        "correction": Setting(str, among(RESOLVED_CORRECTIONS)),  # mapping.correction, "auto" resolved
        "threshold_rule": Setting(
            str | float,
            Rule(lambda v: is_threshold(v) and parse_threshold(v) == v, THRESHOLD_WORDS),  # as parse_threshold returns it
        ),
        "target_fpr": setting(Threshold, "target_fpr"),
        "thresholds": {k: float if k in ("fpr", "fpr_target", "fpr_observed") else float | None for k in THRESHOLD_KEYS},
        "normal_scores": torch.Tensor,
        "combine": dict | None,
    },
    "preprocess": {
        "image_size": setting(DataCommon, "image_size"),
        "channels": setting(DataCommon, "channels"),
        "resize": setting(FolderData, "resize"),
        "alpha": setting(FolderData, "alpha"),
        "downscale": Setting(str, among(DOWNSCALES)),
    },
    "precision": str,
    "provenance": dict,
}
# Scorer files written before these reading rules existed were read so (anogan.data.reading, anogan.data.images).
PREPROCESS_DEFAULTS = {"alpha": "black", "downscale": "bilinear"}
COMBINE_SCHEMA = {"components": list, "mean": torch.Tensor, "std": torch.Tensor, "log": torch.Tensor}
DAMAGED = "the file was edited, cut short or mixed with another; copy the run's scorer.pt again or re-run train.py"


def resolve_path(path: str | Path) -> Path:
    """A scorer file, or a run folder holding ``scorer.pt``; ``ArtifactError`` otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / FILENAME).is_file():
            return path / FILENAME
        raise ArtifactError(
            f"{path} holds no {FILENAME}: give the folder of a finished train.py run (one that wrote metrics.json) or its {FILENAME}."
        )
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: give a run folder or its {FILENAME}.")
    return path


def save_artifact(
    path: Path,
    scorer: Scorer,
    gan_arch: dict,
    calibration: Calibration | dict,
    preprocess: dict,
    precision: str,
    provenance: dict,
) -> Path:
    """Write the scorer file (module docstring) atomically and return its path. ``calibration``:
    the run's ``Calibration`` (or its ``state()``)."""
    cls = type(scorer)
    if not isinstance(calibration, Calibration):
        calibration = Calibration.from_state(calibration)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "scorer": {"target": f"{cls.__module__}.{cls.__qualname__}", "hparams": dict(scorer.hparams)},
        "gan_arch": {**ARCH_DEFAULTS, **gan_arch},
        "state_dict": {k: v.detach().cpu() for k, v in scorer.state_dict().items()},
        "calibration": calibration.state(),
        "preprocess": dict(preprocess),
        "precision": str(precision),
        "provenance": {**provenance, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"could not write {path}: {err.strerror or err}") from None
    return path


# ---------------------------------------------------------------------- checking
def _refused(path: Path, problem: Problem, version: int, holds: str) -> ArtifactError:
    """The one-line ``ArtifactError`` for an entry's problem (``anogan.config.fields.find_problem``);
    ``holds`` introduces the known entries of an unknown one's node ("format version 2 has")."""
    name = problem.key
    if problem.kind == "missing" and name.startswith("scorer.hparams."):
        return ArtifactError(
            f"{path}: entry '{name}' is missing: the run's setting cannot be guessed "
            f"(the class default could differ from what the run used); {DAMAGED}."
        )
    if problem.kind == "missing":
        return ArtifactError(f"{path}: entry '{name}' is missing (format version {version}): {DAMAGED}.")
    if problem.kind == "unknown":
        return ArtifactError(
            f"{path}: unknown entry '{name}' ({holds} {', '.join(problem.known)}): it was written by "
            "another anogan or edited; use the anogan that wrote it, or re-run train.py."
        )
    if problem.kind == "type":
        return ArtifactError(f"{path}: entry '{name}' is {type(problem.value).__name__}, not {problem.allowed}: {DAMAGED}.")
    return ArtifactError(f"{path}: entry '{name}' is {problem.value!r}, not allowed ({problem.allowed}): {DAMAGED}.")


def migrate_v1(payload: dict) -> dict:
    """A version-1 scorer file as version 2. Version 1 had the same entries except inside
    ``calibration``: it kept only the ``fpr``, ``f1`` and ``youden`` thresholds and had no
    ``combine``. Added: ``fpr_target`` (= ``target_fpr``), ``fpr_observed`` (recomputed from the
    validation normals' scores it holds), ``f1_value`` / ``youden_value`` (None: not kept) and
    ``combine: None`` (it did not exist). GAN files older than ``d_norm``/``spectral_norm`` get
    their defaults (``batch``, ``False``: the only behaviour then), as GAN folders do. Anything else
    missing is refused like a damaged version-2 file."""
    out = dict(payload)
    cal = payload.get("calibration")
    if isinstance(cal, dict) and isinstance(cal.get("thresholds"), dict):
        thresholds = dict(cal["thresholds"])
        normals = cal.get("normal_scores")
        fpr: Any = thresholds.get("fpr")
        if isinstance(normals, torch.Tensor) and has_type(fpr, float) and len(normals):
            thresholds.setdefault("fpr_observed", float((normals.double() >= fpr).double().mean()))
        thresholds.setdefault("fpr_target", cal.get("target_fpr"))
        thresholds.setdefault("f1_value", None)
        thresholds.setdefault("youden_value", None)
        out["calibration"] = {**cal, "thresholds": thresholds, "combine": cal.get("combine")}
    if isinstance(payload.get("gan_arch"), dict):
        out["gan_arch"] = {**ARCH_DEFAULTS, **payload["gan_arch"]}
    out["version"] = VERSION
    return out


def _check_calibration(path: Path, cal: dict) -> None:
    """The calibration's tensors beyond their types: the normals' scores, the run's threshold, the
    combination's statistics (one per component)."""
    rule = cal["threshold_rule"]
    normals = cal["normal_scores"]
    if normals.dim() != 1 or not normals.is_floating_point() or not len(normals) or torch.isnan(normals).any():
        raise ArtifactError(
            f"{path}: entry 'calibration.normal_scores' is not a non-empty 1-D float tensor without NaN: {DAMAGED}."
        )
    if isinstance(rule, str) and cal["thresholds"][rule] is None:
        raise ArtifactError(f"{path}: entry 'calibration.thresholds.{rule}' is None but it is the run's rule: {DAMAGED}.")
    if math.isnan(cal["thresholds"]["fpr"]):
        raise ArtifactError(f"{path}: entry 'calibration.thresholds.fpr' is NaN: {DAMAGED}.")
    combine = cal["combine"]
    if combine is not None:
        # complexity_stats: added within format version 2 (files written before it lack it: see Calibration)
        stats = combine.get("complexity_stats")
        if stats is not None and not (isinstance(stats, torch.Tensor) and tuple(stats.shape) == (2,)):
            raise ArtifactError(f"{path}: entry 'calibration.combine.complexity_stats' is not a tensor of 2 values: {DAMAGED}.")
        combine = {k: v for k, v in combine.items() if k != "complexity_stats"}
        problem = find_problem(combine, COMBINE_SCHEMA, "calibration.combine.")
        if problem is not None:
            raise _refused(path, problem, VERSION, f"format version {VERSION} has")
        k = len(combine["components"])
        if not k or not all(isinstance(c, str) for c in combine["components"]):
            raise ArtifactError(f"{path}: entry 'calibration.combine.components' is not a list of names: {DAMAGED}.")
        for key in ("mean", "std", "log"):
            if tuple(combine[key].shape) != (k,):
                raise ArtifactError(
                    f"{path}: entry 'calibration.combine.{key}' holds {tuple(combine[key].shape)}, not ({k},): {DAMAGED}."
                )


def _scorer_class(path: Path, target: str) -> type:
    from anogan.scorers import Scorer

    module_name, _, class_name = target.rpartition(".")
    cls = None
    if module_name.startswith("anogan.scorers"):
        try:
            cls = getattr(importlib.import_module(module_name), class_name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise ArtifactError(
            f"{path}: entry 'scorer.target' names {target!r}, which is no scorer of this anogan: "
            "use the anogan that wrote the file, or re-run train.py."
        )
    return cls


def _check_hparams(path: Path, cls: type, hparams: dict) -> None:
    """The scorer's settings are exactly those its config schema declares (``scorer_settings``; for a
    class without one, its constructor's parameters besides G and D), each of its type and allowed:
    a missing one is refused, never filled with the class default."""
    spec: dict[str, Any] | None = scorer_settings(cls.__name__)
    if spec is None:
        params = inspect.signature(cls).parameters
        spec = {k: Any for k in params if k not in ("generator", "discriminator")}
    problem = find_problem(hparams, spec, "scorer.hparams.")
    if problem is not None:
        raise _refused(path, problem, VERSION, f"{cls.__name__} takes")


def check_state_dict(
    path: Path, where: str, expected: dict[str, torch.Tensor], found: dict, prefix: str = "", sized_by_fit: tuple = ()
) -> None:
    """``found`` holds exactly ``expected``'s tensors with the same shapes; else one ``ArtifactError``
    naming the first missing, unexpected or mis-shaped key (``where``: the entry's name, ``prefix``:
    the keys' prefix inside it). Keys in ``sized_by_fit`` (a scorer's memory banks, whose size the
    training images set) need only the same number of dimensions."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    for keys, what in ((missing, "lacks"), (unexpected, "has the unknown tensor")):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise ArtifactError(
                f"{path}: entry '{where}' {what} '{prefix}{keys[0]}'{more}: the networks are incomplete or not these; {DAMAGED}."
            )
    for k, want in expected.items():
        got = found[k]
        if k in sized_by_fit and isinstance(got, torch.Tensor) and got.dim() == want.dim():
            continue
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ArtifactError(f"{path}: entry '{where}' holds '{prefix}{k}' as {shape}, not {tuple(want.shape)}: {DAMAGED}.")


def check_payload(payload: object, path: Path) -> dict[str, Any]:
    """The scorer file's contents checked against ``SCHEMA`` (a version-1 file migrated first);
    returns the version-2 payload. ``ArtifactError`` (one line) on the first problem."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an anogan scorer file (no '{FORMAT}' format tag).")
    version: Any = payload.get("version")
    if not has_type(version, int) or version < 1:
        raise ArtifactError(f"{path}: entry 'version' is {version!r}, not a format version (1 or {VERSION}): {DAMAGED}.")
    if version > VERSION:
        raise ArtifactError(
            f"{path} was written by a newer anogan (format version {version}; this one reads 1 to {VERSION}): upgrade anogan."
        )
    if version == 1:
        payload = migrate_v1(payload)
    if isinstance(payload.get("gan_arch"), dict):  # architecture keys added later: their defaults (plain DCGAN)
        payload = {**payload, "gan_arch": {**ARCH_DEFAULTS, **payload["gan_arch"]}}
    if isinstance(payload.get("preprocess"), dict):  # reading rules added later: the rules such files were read by
        payload = {**payload, "preprocess": {**PREPROCESS_DEFAULTS, **payload["preprocess"]}}
    problem = find_problem(payload, SCHEMA)
    if problem is not None:
        raise _refused(path, problem, version, f"format version {version} has")
    _check_calibration(path, payload["calibration"])
    cls = _scorer_class(path, payload["scorer"]["target"])
    _check_hparams(path, cls, payload["scorer"]["hparams"])
    prep = payload["preprocess"]
    if prep["image_size"] != payload["gan_arch"]["image_size"] or prep["channels"] != payload["gan_arch"]["channels"]:
        raise ArtifactError(f"{path}: entries 'preprocess' and 'gan_arch' disagree on image size or channels: {DAMAGED}.")
    return payload


def read_artifact(path: str | Path, data: bytes | None = None) -> dict:
    """The checked contents of a scorer file (a run folder is accepted too), as format version 2.
    ``data``: the file's bytes, already read (then ``path`` only names it in messages; a server
    reads the file once and gives every worker these bytes). A file that is no torch file, or
    holds anything but plain tensors, numbers and strings, is one ``ArtifactError`` line: it is
    never loaded unsafely, whatever PyTorch's own message suggests."""
    path = Path(path) if data is not None else resolve_path(path)
    try:
        payload = torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ArtifactError(
            f"{path} is not a readable anogan scorer file: it holds objects other than tensors, numbers and strings, "
            "or is not a torch file at all (it is never loaded unsafely); copy the run's scorer.pt again or re-run train.py."
        ) from None
    except Exception as err:
        reason = "cut short or not a torch file" if isinstance(err, RuntimeError) else type(err).__name__
        raise ArtifactError(
            f"{path} is not a readable anogan scorer file ({reason}); copy the run's scorer.pt again or re-run train.py."
        ) from None
    return check_payload(payload, path)


def file_digest(data: bytes) -> str:
    """The sha256 of a scorer file's bytes (hex): what ``anogan-serve`` reports as the model it serves."""
    return hashlib.sha256(data).hexdigest()


def gan_from_artifact(payload: dict, path: Path | str = FILENAME) -> tuple[Generator, Discriminator]:
    """G and D (eval mode) rebuilt from a checked scorer file's contents; ``ArtifactError`` when their
    tensors are incomplete or of other shapes."""
    try:
        generator, discriminator = build_networks(payload["gan_arch"])
    except (ValueError, TypeError) as err:
        raise ArtifactError(f"{path}: entry 'gan_arch' does not describe a network ({err}): {DAMAGED}.") from None
    state = payload["state_dict"]
    for prefix, net in (("generator.", generator), ("discriminator.", discriminator)):
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        check_state_dict(Path(path), "state_dict", net.state_dict(), found, prefix)
        net.load_state_dict(found)
    return generator.eval(), discriminator.eval()


def load_artifact(path: str | Path, data: bytes | None = None) -> tuple[Scorer, dict[str, Any]]:
    """``(scorer, payload)``: the scorer rebuilt with its weights (eval mode) and the file's checked
    contents (``payload["calibration"]``: ``Calibration.state``; ``["preprocess"]``,
    ``["precision"]``, ``["provenance"]``). ``data``: the file's bytes, already read
    (``read_artifact``). ``ArtifactError`` (one line) for any problem."""
    path = Path(path) if data is not None else resolve_path(path)
    payload = read_artifact(path, data)
    cls = _scorer_class(path, payload["scorer"]["target"])
    generator, discriminator = gan_from_artifact(payload, path)
    try:
        scorer = cls(generator, discriminator, **payload["scorer"]["hparams"])
    except (ValueError, TypeError, UserError) as err:
        raise ArtifactError(f"{path}: entry 'scorer.hparams' is refused by {cls.__name__} ({err}): {DAMAGED}.") from None
    check_state_dict(path, "state_dict", scorer.state_dict(), payload["state_dict"], sized_by_fit=scorer.sized_by_fit)
    scorer.load_state_dict(payload["state_dict"])
    try:
        Calibration.from_state(payload["calibration"])
    except (ValueError, UserError) as err:
        raise ArtifactError(f"{path}: entry 'calibration' cannot be used ({err}): {DAMAGED}.") from None
    return scorer.eval(), payload


def load_gan_checkpoint(path: str | Path, arch: dict) -> tuple[Generator, Discriminator]:
    """``gan.checkpoint=...``: G and D from a scorer file, or a run folder holding one (the exact GAN
    the run scored with, cached or not; checked as ``read_artifact`` does), else from a GAN folder
    or a GAN .ckpt (``anogan.engine.gan_store.load_checkpoint``). ``arch``: the configured architecture,
    which the file's must equal. Raises ``ArtifactError`` / ``GANLoadError`` (one line each)."""
    path = Path(path).expanduser()
    artifact = path / FILENAME if path.is_dir() else path
    if artifact.is_file() and artifact.suffix == ".pt":
        payload = read_artifact(artifact)
        check_arch(payload["gan_arch"], arch, artifact)
        return gan_from_artifact(payload, artifact)
    return load_checkpoint(path, arch)
