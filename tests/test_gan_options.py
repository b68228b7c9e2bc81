"""The GAN training options: WGAN-GP, spectral norm, DiffAugment, EMA, checkpoint
selection on validation only, divergence stops; tiny nets (latent 16, widths 8, 32 px)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from anogan.config.checks import check_config
from anogan.config.gan_options import parse_policy
from anogan.data.splits import AnomalySplit
from anogan.engine import gan_store
from anogan.engine.selection import CheckpointSelection
from anogan.models.augment import diff_augment
from anogan.models.dcgan import Discriminator
from anogan.models.gan import GAN, gradient_penalty
from anogan.models.transforms import transform_count
from anogan.utils.errors import DivergenceError, UserError
from conftest import compose_config, tiny_overrides
from test_config_defaults import config_refusal

TINY = dict(latent_dim=16, image_size=32, g_width=8, d_width=8)
ALL_OPTIONS = dict(
    objective="wgan_gp",
    gp_weight=10.0,
    critic_steps=2,
    g_steps=1,
    d_norm="layer",
    spectral_norm=True,
    diffaugment="color,translation,cutout",
    ema_decay=0.9,
    nda="jigsaw,rotation",
    nda_weight=0.4,
)


def loader(n_batches: int, batch_size: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    data = [{"image": torch.rand(3, 32, 32, generator=g) * 2 - 1} for _ in range(n_batches * batch_size)]
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


def trainer(**kw) -> L.Trainer:
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, **kw)


def step_count(opt, net) -> int:
    return int(opt.state[next(iter(net.parameters()))]["step"])


# --- WGAN-GP ---------------------------------------------------------------------------------------
def test_gradient_penalty_of_a_linear_critic():
    # D(x) = <w, x>: the gradient is w everywhere, so the penalty is (||w|| - 1)^2 exactly
    critic = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.fill_(3.0 / np.sqrt(3 * 8 * 8))  # ||w|| = 3
    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx(4.0, rel=1e-5)
    gp.backward()  # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    w = critic[1].weight.detach()
    assert torch.allclose(critic[1].weight.grad, 2 * 2 * w / 3, rtol=1e-4)


def test_wgan_gp_counts_critic_and_generator_steps():
    L.seed_everything(0)
    model = GAN(**TINY, objective="wgan_gp", gp_weight=10.0, critic_steps=2, g_steps=1, d_norm="layer", scheduler=None)
    t = trainer(max_epochs=1)
    t.fit(model, loader(5))
    opt_g, opt_d = t.optimizers
    assert step_count(opt_d, model.discriminator) == 5  # one critic step per batch
    assert step_count(opt_g, model.generator) == 3  # after batches 2 and 4, and the epoch's last (5)
    assert "train/gradient_penalty_epoch" in t.callback_metrics
    assert torch.isfinite(t.callback_metrics["train/loss_d_epoch"])


@pytest.mark.parametrize(
    "options, key",
    [
        (dict(objective="wgan_gp", gp_weight=10.0), "model.gp_weight"),  # BatchNorm critic
        (dict(objective="wgan_gp", gp_weight=0.0, d_norm="none"), "model.objective=wgan_gp"),
        (dict(spectral_norm=True), "model.spectral_norm"),
        (dict(d_norm="group"), "model.d_norm"),
        (dict(diffaugment="'color,flip'"), "model.diffaugment"),
        (dict(ema_decay=1.0), "model.ema_decay"),
        (dict(critic_steps=0), "model.critic_steps"),
        (dict(selection=dict(every_n_epochs=0, images=8, steps=3, lr=0.01, seed=0)), "model.selection.every_n_epochs"),
    ],
)
def test_bad_options_are_user_errors_naming_the_key(tiny_cifar, options, key):
    cfg = compose_config([*tiny_overrides(tiny_cifar), *(f"model.{k}={v}" for k, v in options.items() if k != "selection")])
    if "selection" in options:
        cfg.model.selection.every_n_epochs = options["selection"]["every_n_epochs"]
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        check_config(cfg)


@pytest.mark.parametrize(
    "build,override",
    [
        (lambda: Discriminator(3, 32, 8, norm="group"), "model.d_norm=group"),
        (lambda: transform_count("rotation"), "model.self_supervised=rotation"),
    ],
)
def test_a_bad_norm_or_transform_set_from_python_is_refused_with_the_configs_line(build, override):
    with pytest.raises(UserError) as caught:
        build()
    assert str(caught.value) == config_refusal([override], "model")


# --- spectral norm ---------------------------------------------------------------------------------
def test_spectral_norm_makes_every_conv_of_d_have_largest_singular_value_one():
    torch.manual_seed(0)
    d = Discriminator(3, 32, 8, norm="none", spectral_norm=True)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(5):  # one power iteration per training-mode forward
        d(x)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4  # 3 feature convs + head at 32 px
    for conv in convs:
        raw = conv.parametrizations.weight.original.detach().flatten(1)
        assert torch.linalg.matrix_norm(raw, ord=2) < 0.9  # N(0, 0.02) weights: not already normalised
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)
    assert d.features(x).shape == (4, 32, 4, 4) and d(x).shape == (4,)


def test_a_gan_with_every_option_saves_and_rebuilds_identically(tmp_path):
    L.seed_everything(0)
    model = GAN(**TINY, **ALL_OPTIONS)
    trainer(max_epochs=1).fit(model, loader(4))  # 4 critic steps, 2 G steps (so EMA != G)
    arch = {k: model.hparams[k] for k in gan_store.ARCH_KEYS if k in model.hparams} | {"channels": 3}
    gan_store.save_gan(model.scoring_generator, model.discriminator, arch, tmp_path / "gan")
    g2, d2, meta = gan_store.load_gan_folder(tmp_path / "gan")
    assert meta["d_norm"] == "layer" and meta["spectral_norm"] is True
    model.to(memory_format=torch.contiguous_format)  # as the rebuilt nets (training ran channels_last)
    g, d = model.scoring_generator.eval(), model.discriminator.eval()
    z, x = torch.randn(4, 16, 1, 1), torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g2.eval()(z), g(z))
        assert torch.equal(d2.eval()(x), d(x))
        assert torch.equal(d2.features(x), d.features(x))
    assert not torch.equal(model.scoring_generator.net[0].weight, model.generator.net[0].weight)  # EMA is saved, not G


def test_a_gan_folder_saved_before_the_new_architecture_keys_still_loads(tmp_path):
    folder = tmp_path / "old"
    gan_store.save_gan(
        *gan_store.build_networks({**TINY, "channels": 3, "g_width": 8, "d_width": 8}),
        {"latent_dim": 16, "channels": 3, "image_size": 32, "g_width": 8, "d_width": 8},
        folder,
    )
    g, d, _ = gan_store.load_gan_folder(folder)
    assert isinstance(d.features[1], nn.BatchNorm2d)


# --- DiffAugment -----------------------------------------------------------------------------------
def test_diffaugment_is_differentiable_seeded_and_off_when_disabled():
    policy = parse_policy("color,translation,cutout")
    x = (torch.rand(6, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = diff_augment(x, policy, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and not torch.equal(y, x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    again = diff_augment(x, policy, torch.Generator().manual_seed(1))
    other = diff_augment(x, policy, torch.Generator().manual_seed(2))
    assert torch.equal(again, y) and not torch.equal(other, y)
    # disabled: the batch itself, and the GAN does not touch D's input
    assert parse_policy(None) == () and diff_augment(x, ()) is x
    assert GAN(**TINY)._augment(x) is x
    with pytest.raises(UserError, match="model.diffaugment"):
        parse_policy("color,color")


def test_translation_shifts_and_cutout_zeroes_a_square():
    x = torch.arange(1, 1 + 32 * 32, dtype=torch.float32).view(1, 1, 32, 32).repeat(8, 1, 1, 1)
    shifted = diff_augment(x, ("translation",), torch.Generator().manual_seed(0))
    for img in shifted:  # every non-zero pixel is the original's, shifted by at most 4 pixels
        nz = img[img > 0]
        assert len(nz) >= 28 * 28 and torch.isin(nz, x[0]).all()
    cut = diff_augment(torch.ones(8, 3, 32, 32), ("cutout",), torch.Generator().manual_seed(0))
    zeros = (cut[:, 0] == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 16 * 16).all() and torch.equal(cut[:, 0] == 0, cut[:, 2] == 0)


# --- EMA -------------------------------------------------------------------------------------------
class RecordG(L.Callback):
    def __init__(self):
        self.states = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append({k: v.detach().clone() for k, v in pl_module.generator.state_dict().items()})


def test_ema_equals_the_closed_form_average_and_is_the_scoring_generator():
    L.seed_everything(0)
    decay, k = 0.5, 4
    model = GAN(**TINY, g_steps=1, ema_decay=decay)
    rec = RecordG()
    trainer(max_steps=2 * k, callbacks=[rec]).fit(model, loader(k))  # max_steps counts D and G steps
    assert len(rec.states) == k  # one G step per batch
    ema = model.generator_ema.module.state_dict()
    for name, w_k in rec.states[-1].items():
        if "running" in name or "num_batches" in name:  # BatchNorm buffers: copied from G
            assert torch.equal(ema[name], w_k), name
            continue
        # W_1 copied, then W_t = d W_{t-1} + (1 - d) w_t:  W_k = d^(k-1) w_1 + sum_{j>=2} (1 - d) d^(k-j) w_j
        closed = decay ** (k - 1) * rec.states[0][name]
        closed = closed + sum((1 - decay) * decay ** (k - j) * rec.states[j - 1][name] for j in range(2, k + 1))
        assert torch.allclose(ema[name], closed, atol=1e-6), name
        assert not torch.allclose(ema[name], w_k, atol=1e-6), name
    assert model.scoring_generator is model.generator_ema.module
    model.generator_ema.module.eval()
    assert torch.equal(model.sample(), model.generator_ema.module(model.fixed_noise))


# --- checkpoint selection ---------------------------------------------------------------------------
SELECTION = dict(every_n_epochs=1, images=8, steps=2, lr=0.01, seed=0)


class RecordEpochs(L.Callback):
    def __init__(self):
        self.states = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append(
            {k: v.detach().clone() for k, v in pl_module.state_dict().items() if k.startswith(("generator", "discriminator"))}
        )


def test_selection_keeps_the_epoch_with_the_best_criterion(monkeypatch):
    criteria = iter([0.2, 0.7, 0.3, 0.5])
    monkeypatch.setattr(
        CheckpointSelection, "evaluate", lambda self, pl_module, dm: {"criterion": next(criteria), "kind": "mock"}
    )
    L.seed_everything(0)
    model = GAN(**TINY, ema_decay=0.9, selection=SELECTION)
    rec, selection = RecordEpochs(), CheckpointSelection(**SELECTION)  # what train.fit_gan attaches
    trainer(max_epochs=4, callbacks=[rec, selection]).fit(model, loader(2))
    summary = selection.summary()
    assert summary["best_epoch"] == 1 and summary["best_criterion"] == 0.7
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2, 3]
    final = model.state_dict()
    for name, value in rec.states[1].items():  # the networks hold epoch 1's weights again
        assert torch.equal(final[name], value), name
    assert not all(torch.equal(final[n], v) for n, v in rec.states[3].items())


class RecordingSplit(torch.utils.data.Dataset):
    """An eval set that records which rows are read."""

    def __init__(self, split: AnomalySplit):
        self.split, self.read = split, []
        self.classes = split.classes

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.split[i]


class FakeData:
    def __init__(self, classes, split):
        n = len(classes)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.eval_set = RecordingSplit(AnomalySplit(images, np.array(classes), np.arange(n), normal_class=1))
        self.eval_split = np.array(split)


@pytest.mark.parametrize(
    "val_classes, kind", [([1] * 6 + [0, 2, 3, 4, 5, 6] * 2, "val_auroc"), ([1] * 18, "minus_mean_residual_val_normals")]
)
def test_selection_criterion_reads_validation_rows_only(val_classes, kind):
    test_classes = [1, 0, 2, 3] * 5
    # validation and test rows interleaved, as a worst case
    classes, split = [], []
    for i in range(max(len(val_classes), len(test_classes))):
        if i < len(val_classes):
            classes.append(val_classes[i]), split.append("val")
        if i < len(test_classes):
            classes.append(test_classes[i]), split.append("test")
    data = FakeData(classes, split)
    cb = CheckpointSelection(**{**SELECTION, "images": 12})
    model = GAN(**TINY)
    result = cb.evaluate(model, data)
    val_rows = set(np.flatnonzero(data.eval_split == "val").tolist())
    assert data.eval_set.read and set(data.eval_set.read) <= val_rows
    assert len(data.eval_set.read) == 12 and result["kind"] == kind and np.isfinite(result["criterion"])
    if kind == "val_auroc":
        assert result["criterion"] == max(result["auroc_raw"], result["auroc_complexity"])
        normals = sum(data.eval_set.classes[i].item() == 1 for i in data.eval_set.read)
        assert normals == 4  # stratified: 6 of 18 validation rows are normal -> 4 of 12
    else:
        assert result["criterion"] == -result["mean_residual"]


# --- divergence ------------------------------------------------------------------------------------
def test_a_blow_up_in_the_first_epoch_says_nothing_is_kept():
    model = GAN(**TINY, divergence=dict(max_abs_loss=1e-9, saturation=0.01, saturated_epochs=10))
    with pytest.raises(DivergenceError, match="max_abs_loss.*nothing is kept"):
        trainer(max_epochs=1).fit(model, loader(2))


class LossLimitDropsAtEpoch1(L.Callback):
    """A finite blow-up in epoch 1: the loss limit drops below any loss."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            pl_module.divergence["max_abs_loss"] = 1e-9


class SaturatedGAN(GAN):
    """Logs D(x) = 0.999 and D(G(z)) = 0.001: a discriminator that has won."""

    def log_dict(self, values, **kw):
        fixed = {"d_real": 0.999, "d_fake": 0.001}
        values = {k: next((torch.tensor(v) for n, v in fixed.items() if n in k), value) for k, value in values.items()}
        super().log_dict(values, **kw)


@pytest.mark.parametrize("what, message", [("loss", "discriminator loss"), ("saturation", "D saturated.*for 2 epochs")])
def test_a_later_stop_names_the_checkpoint_that_is_kept(tmp_path, what, message):
    cls, callbacks = (GAN, [LossLimitDropsAtEpoch1()]) if what == "loss" else (SaturatedGAN, [])
    model = cls(**TINY, divergence=dict(max_abs_loss=1e4, saturation=0.01, saturated_epochs=2))
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1, enable_version_counter=False)
    with pytest.raises(DivergenceError, match=message) as err:
        trainer(max_epochs=3, enable_checkpointing=True, callbacks=[*callbacks, ckpt]).fit(model, loader(2))
    assert model.current_epoch == 1 and (tmp_path / "last.ckpt").is_file()
    # both stop in epoch 1, before its checkpoint (Lightning saves after the module's epoch-end hook)
    assert f"kept: {tmp_path / 'last.ckpt'}, written at the end of epoch 0" in str(err.value)


# --- end to end ------------------------------------------------------------------------------------
def test_train_end_to_end_with_every_option(tiny_cifar, tmp_path):
    from conftest import train_in_process as run_train

    options = [f"model.{k}={v!r}" if k in ("diffaugment", "nda") else f"model.{k}={v}" for k, v in ALL_OPTIONS.items()]
    options += [
        "model.selection.every_n_epochs=1",
        "model.selection.images=16",
        "model.selection.steps=2",
        "trainer.max_epochs=2",
        "gan.cache=false",
    ]
    run_train([*tiny_overrides(tiny_cifar, tmp_path), *options])
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0
    meta = json.loads((run / "gan" / "gan.json").read_text())
    assert meta["spectral_norm"] is True and meta["d_norm"] == "layer"
    sel = meta["selection"]
    assert sel["best_epoch"] in (0, 1) and [h["epoch"] for h in sel["history"]] == [0, 1]
    assert sel["best_criterion"] == max(h["criterion"] for h in sel["history"])


def test_selection_without_validation_rows_is_a_user_error():
    data = FakeData([1, 0, 2], ["test", "test", "test"])
    with pytest.raises(UserError, match="model.selection.every_n_epochs"):
        CheckpointSelection(**SELECTION).validation_rows(data)
    with pytest.raises(UserError, match="model.selection.every_n_epochs"):
        CheckpointSelection(**SELECTION).validation_rows(None)  # fitted on plain dataloaders
    assert data.eval_set.read == []


def test_the_gan_package_imports_nothing_from_data_or_scorers():
    """Layers point one way (issue 26): checkpoint selection, which reads the data module and runs the
    latent search, is a callback the pipeline attaches; ``anogan.models`` itself never imports them."""
    import ast

    import anogan.models

    imported = set()
    for path in Path(anogan.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "anogan.models.gan" in imported or "anogan.models.dcgan" in imported  # the walk sees the package's imports
    above = {
        m for m in imported if m.startswith(("anogan.data", "anogan.scorers", "anogan.engine.selection", "anogan.metrics.image"))
    }
    assert not above, above
