from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import CONF_DIR, compose_config, tiny_overrides

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tiny_cifar):
    cfg = compose_config([f"experiment={experiment}", f"data.root={tiny_cifar}"])
    assert cfg.model.image_size == cfg.data.image_size and cfg.model.channels == cfg.data.channels
    model = instantiate(cfg.model)
    assert model.hparams.latent_dim == cfg.model.latent_dim
    dm = instantiate(cfg.data)
    if cfg.data._target_.endswith("FolderAnomalyDataModule"):  # data=folder presets: no class, a resize policy
        assert dm.hparams.resize in ("stretch", "crop", "pad")
    else:
        assert dm.normal_class == 1


def test_guidebook_settings():
    cfg = compose_config(["experiment=cifar_car"])
    assert (cfg.model.latent_dim, cfg.model.lr, cfg.data.batch_size, cfg.data.image_size) == (128, 1e-4, 128, 64)
    assert (cfg.trainer.max_epochs, cfg.model.g_steps, cfg.mapping.alpha, cfg.mapping.iterations) == (200, 3, 0.5, 400)
    assert cfg.data.protocol == "seed"


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_trainer_presets_compose(trainer):
    cfg = compose_config([f"trainer={trainer}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_debug_config_composes(tiny_cifar):
    cfg = compose_config(["debug=fast", *tiny_overrides(tiny_cifar)])
    assert cfg.trainer.max_epochs == 1


def test_cpu_experiment_has_the_measured_defaults(tiny_cifar):
    """cifar_car_cpu is the recipe chosen on validation (docs/results.md): the geotrans SS-GAN, 15 epochs,
    one G step, precision auto, scored by D's transformations + features with the correction chosen on
    validation; cifar_car_cpu_anogan keeps the AnoGAN recipe (E(x) + 5 steps, alpha 0.1), and
    mapping=latent_cpu gives back the 200-step search with none of the hybrid's keys."""
    from anogan.config.checks import check_config

    tiny_data = [o for o in tiny_overrides(tiny_cifar) if not o.startswith("mapping.")]  # the latent search's keys
    cfg = compose_config([*tiny_data, "experiment=cifar_car_cpu"])
    check_config(cfg)
    assert cfg.mapping._target_ == "anogan.scorers.DFeatureScorer" and list(cfg.mapping.combine) == [
        "transformations",
        "dfeatures",
    ]
    assert cfg.mapping.transforms == "geotrans" and cfg.mapping.correction == "auto" and cfg.mapping.maps
    cfg = compose_config(["experiment=cifar_car_cpu"])
    assert (cfg.model.self_supervised, cfg.model.g_steps, cfg.trainer.max_epochs, cfg.trainer.precision) == (
        "geotrans",
        1,
        15,
        "auto",
    )
    cfg = compose_config([*tiny_overrides(tiny_cifar), "experiment=cifar_car_cpu_anogan", "mapping.iterations=5"])
    check_config(cfg)
    assert (
        cfg.mapping._target_ == "anogan.scorers.EncoderSearch" and cfg.mapping.alpha == 0.1 and cfg.mapping.correction == "auto"
    )
    cfg = compose_config(["experiment=cifar_car_cpu_anogan"])
    assert cfg.mapping.iterations == 5 and cfg.mapping.encoder.epochs == 20
    # ... and both GANs train with DiffAugment (docs/gan_training.md); the guidebook's cifar_car and the
    # WGAN-GP preset (the paper's recipe alone) do not.
    assert cfg.model.diffaugment == "color,translation,cutout"
    assert compose_config(["experiment=cifar_car_cpu"]).model.diffaugment == "color,translation,cutout"
    assert compose_config(["experiment=cifar_car"]).model.diffaugment is None
    assert compose_config(["experiment=cifar_car_cpu_wgan_gp"]).model.diffaugment is None
    cfg = compose_config(["experiment=cifar_car_cpu_anogan", "mapping=latent_cpu"])
    assert (
        cfg.mapping._target_ == "anogan.scorers.LatentMapping" and cfg.mapping.iterations == 200 and "encoder" not in cfg.mapping
    )


def test_sweep_config_holds_the_grid():
    cfg = compose_config(["hparams_search=alpha_latent", "experiment=cifar_car_cpu"])
    assert dict(cfg.hydra.sweeper.params) == {"mapping.alpha": "0.1,0.5,0.9", "model.latent_dim": "64,128"}
    assert cfg.mapping._target_ == "anogan.scorers.EncoderSearch"  # alpha weighs the AnoGAN score: the hybrid scores


def test_every_group_option_is_typed_by_its_schema(tiny_cifar):
    """Each option of data/model/mapping/trainer/paths composes onto its dataclass (anogan.config.schema),
    so Hydra knows every key's type; every key the yaml files set is a field of it."""
    import dataclasses

    from omegaconf import OmegaConf

    from anogan.config.schema import SCHEMAS, Config

    cfg = compose_config([])
    assert OmegaConf.get_type(cfg) is Config
    for group in ("data", "model", "mapping", "trainer", "paths"):
        for option in sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")):
            node = compose_config([f"{group}={option}"])[group]
            schema = OmegaConf.get_type(node)
            assert schema in SCHEMAS.values(), (group, option, schema)
            assert set(node) <= {f.name for f in dataclasses.fields(schema)}, (group, option)
            assert not _missing(node), (group, option, _missing(node))


def _missing(node, prefix: str = "") -> list[str]:
    """Keys left at the schema's MISSING (no value in the yaml file), without resolving interpolations."""
    from omegaconf import DictConfig, OmegaConf

    found = []
    for key in node:
        if OmegaConf.is_missing(node, key):
            found.append(prefix + key)
        elif isinstance(child := node._get_node(key), DictConfig) and not child._is_none():
            found += _missing(child, f"{prefix}{key}.")
    return found
