"""Defaults live in conf/ only: a value changed there reaches the composed config, the objects built
from it, the scorer file and predict; a key left out of conf/ is refused, never filled by Python.
Every run here composes a COPY of conf/ (Hydra's config dir in a temporary folder)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import shutil
import typing
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import MISSING, OmegaConf

from anogan.config.checks import check_config
from anogan.config.fields import find_problem, refusal
from anogan.config.schema import SCHEMAS, Config
from anogan.utils.errors import ConfigError
from conftest import CONF_DIR, compose_config, small_nets, tiny_overrides


def _copy_conf(tmp_path: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    """conf/ copied to ``tmp_path``, with each file's (pattern, replacement) line edits applied."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    for name, changes in edits.items():
        path = conf / name
        text = path.read_text()
        for pattern, replacement in changes:
            text, n = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
            assert n == 1, (name, pattern)
        path.write_text(text)
    return conf


def _compose(conf: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def config_refusal(overrides: list[str], node: str) -> str:
    """The one line (``fields.refusal``) for the first value of the config node ``node`` that its
    schema's rule refuses, in the config composed with ``overrides``."""
    values = compose_config(overrides)[node]
    problem = find_problem(values, OmegaConf.get_type(values), f"{node}.")
    assert problem is not None and problem.kind == "value", problem
    return refusal(problem.key, problem.value, problem.allowed)


def _schemas() -> set[type]:
    found, todo = set(), [Config, *SCHEMAS.values()]
    while todo:
        schema = todo.pop()
        if schema in found:
            continue
        found.add(schema)
        hints = typing.get_type_hints(schema)
        todo += [hints[f.name] for f in dataclasses.fields(schema) if dataclasses.is_dataclass(hints[f.name])]
    return found


def test_no_schema_field_holds_a_python_default():
    """Every field of every config schema (nested ones included) is MISSING: its value comes from conf/."""
    defaults = [
        f"{schema.__name__}.{f.name}"
        for schema in _schemas()
        for f in dataclasses.fields(schema)
        if f.default is not MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert defaults == []


def test_every_scorer_is_built_from_exactly_its_schema():
    """A scorer's constructor takes its schema's keys (not _target_) and the run's seed: nothing the
    config does not pass, so no constructor default is ever used by a run."""
    import anogan.scorers
    from anogan.config.scorer_schema import MAPPING_SCHEMAS, SCORER_SCHEMAS, scorer_settings

    assert set(SCORER_SCHEMAS.values()) == set(MAPPING_SCHEMAS.values())
    for name in SCORER_SCHEMAS:
        params = set(inspect.signature(getattr(anogan.scorers, name)).parameters) - {"generator", "discriminator"}
        assert params == set(scorer_settings(name) or ()), name
    for option, schema in MAPPING_SCHEMAS.items():  # each yaml's _target_ names the class of its schema
        target = (Path(CONF_DIR) / "mapping" / f"{option}.yaml").read_text().split("_target_: ")[1].split()[0]
        assert SCORER_SCHEMAS[target.rsplit(".", 1)[-1]] is schema, option


def test_the_gan_is_built_from_every_model_key():
    from anogan.config.gan_options import Model
    from anogan.models.gan import GAN

    assert set(inspect.signature(GAN).parameters) == {f.name for f in dataclasses.fields(Model)} - {"_target_"}


def test_the_gans_fallback_divergence_and_health_are_confs_values():
    """GAN(divergence=None, health=None) (a GAN built outside a run) uses conf/model/dcgan.yaml's values."""
    from anogan.config.gan_options import DEFAULT_DIVERGENCE, DEFAULT_HEALTH

    model = compose_config([]).model
    assert OmegaConf.to_container(model.divergence) == DEFAULT_DIVERGENCE
    assert OmegaConf.to_container(model.health) == DEFAULT_HEALTH


@pytest.mark.parametrize(
    "name,key",
    [
        ("mapping/latent.yaml", "iterations"),
        ("model/dcgan.yaml", "g_steps"),
        ("trainer/cpu.yaml", "num_nodes"),
        ("mapping/transformations.yaml", "combine"),
        ("config.yaml", "  target_fpr"),
    ],
)
def test_a_key_left_out_of_conf_is_refused_not_filled_by_python(tmp_path, tiny_cifar, name, key):
    conf = _copy_conf(tmp_path, {name: [(rf"^{key}:.*\n", "")]})
    group = {"mapping/transformations.yaml": ["model.self_supervised=rotations", "mapping=transformations"]}.get(name, [])
    overrides = [o for o in tiny_overrides(tiny_cifar) if not o.startswith("mapping.iterations")] + group
    with pytest.raises(ConfigError, match=rf"{key.strip()} has no value") as err:
        check_config(_compose(conf, overrides))
    assert "\n" not in str(err.value)


def test_a_default_changed_in_conf_reaches_the_config_the_objects_the_scorer_file_and_predict(tmp_path, tiny_cifar, monkeypatch):
    """g_steps 3 -> 2 (a GAN keyword default), iterations 400 -> 2 and map_sigma 1.0 -> 0.5 (scorer
    keyword defaults), threshold.target_fpr 0.05 -> 0.2: each reaches everything downstream."""
    import anogan
    from anogan.engine.artifact import read_artifact

    conf = _copy_conf(
        tmp_path,
        {
            "model/dcgan.yaml": [(r"^g_steps: 3\b", "g_steps: 2")],
            "mapping/latent.yaml": [(r"^iterations: 400\b", "iterations: 2"), (r"^map_sigma: 1.0\b", "map_sigma: 0.5")],
            "config.yaml": [(r"^  target_fpr: 0.05\b", "  target_fpr: 0.2")],
        },
    )
    overrides = [o for o in tiny_overrides(tiny_cifar, tmp_path) if not o.startswith(("mapping.iterations", "hydra.run.dir"))]
    cfg = _compose(conf, overrides)
    check_config(cfg)
    assert (cfg.model.g_steps, cfg.mapping.iterations, cfg.mapping.map_sigma, cfg.threshold.target_fpr) == (2, 2, 0.5, 0.2)
    assert instantiate(cfg.model, _convert_="all").hparams.g_steps == 2
    g, d = small_nets(latent=cfg.model.latent_dim, width=cfg.model.g_width)
    scorer = instantiate(cfg.mapping, generator=g, discriminator=d, seed=cfg.seed, _convert_="all")
    assert (scorer.hparams.iterations, scorer.hparams.map_sigma) == (2, 0.5)

    monkeypatch.setattr(anogan.config.paths, "conf_dir", lambda: str(conf))  # anogan.fit composes the copy
    result = anogan.fit(overrides, run_dir=tmp_path / "run")
    run = Path(result.run_dir)
    payload = read_artifact(run / "scorer.pt")
    assert (payload["scorer"]["hparams"]["iterations"], payload["scorer"]["hparams"]["map_sigma"]) == (2, 0.5)
    assert payload["calibration"]["target_fpr"] == 0.2
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["g_steps"] == 2
    detector = anogan.load(run, device="cpu")
    assert detector.scorer.hparams.iterations == 2 and detector.calibration.thresholds["fpr_target"] == 0.2
