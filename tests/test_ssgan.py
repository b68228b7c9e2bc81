"""Self-supervised GAN training: the transformation sets, D's transformation head, the
auxiliary losses, and a tiny end-to-end run whose D keeps its head through gan_store and scorer.pt."""

from __future__ import annotations

import io
import json
import logging

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anogan.config.checks import check_config
from anogan.config.gan_options import DEFAULT_HEALTH
from anogan.engine import gan_cache, gan_store
from anogan.engine.artifact import gan_from_artifact, read_artifact
from anogan.models.dcgan import Discriminator
from anogan.models.gan import GAN
from anogan.models.health import HealthMonitor, diversity_ratio, mean_pairwise_distance
from anogan.models.transforms import (
    TRANSFORM_SETS,
    apply_one_each,
    apply_transforms,
    balanced_labels,
    transform_count,
    transform_labels,
)
from anogan.utils.errors import UserError
from conftest import compose_config, tiny_overrides, train_in_process

TINY = dict(latent_dim=16, image_size=32, g_width=8, d_width=8)


# --- transformation sets ---------------------------------------------------------------------------
def test_rotations_are_torch_rot90_in_transform_major_order_with_their_labels():
    x = torch.randn(3, 2, 8, 8)
    out = apply_transforms(x, "rotations")
    assert out.shape == (12, 2, 8, 8) and transform_count("rotations") == 4
    for k in range(4):
        assert torch.equal(out[3 * k : 3 * k + 3], torch.rot90(x, k, dims=(2, 3)))
    assert transform_labels(3, "rotations").tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert transform_labels(2, "geotrans").tolist() == np.repeat(np.arange(72), 2).tolist()


def test_a_marked_corner_lands_in_a_different_corner_under_each_rotation():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0  # top-left
    corners = [tuple(int(i) for i in torch.nonzero(img[0])[0]) for img in apply_transforms(x, "rotations")]
    assert corners == [(0, 0), (7, 0), (7, 7), (0, 7)]  # counter-clockwise, as torch.rot90 / np.rot90


def _geotrans_reference(image: np.ndarray, flip: bool, tx: int, ty: int, k: int) -> np.ndarray:
    """Golan & El-Yaniv's AffineTransformation on one H×W×C image: np.fliplr, Keras'
    apply_affine_transform(tx, ty, fill_mode='reflect') = scipy's affine_transform with offset
    (tx, ty) per channel, then np.rot90."""
    from scipy import ndimage

    out = np.fliplr(image) if flip else image
    if tx or ty:
        out = np.stack(
            [ndimage.affine_transform(out[..., c], np.eye(2), (tx, ty), order=1, mode="reflect") for c in range(out.shape[2])],
            axis=2,
        )
    return np.rot90(out, k)


def test_geotrans_equals_the_reference_code_transformation_by_transformation():
    pytest.importorskip("scipy")
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out = apply_transforms(x, "geotrans")
    assert out.shape == (144, 3, 16, 16)
    import itertools

    t = 16 // 4  # their default 8 px at 32 px: S/4
    order = list(itertools.product((False, True), (0, -t, t), (0, -t, t), range(4)))  # their Transformer's list
    assert len(order) == len(TRANSFORM_SETS["geotrans"]) == 72
    for index, (flip, tx, ty, k) in enumerate(order):
        for n in range(2):
            want = _geotrans_reference(x[n].permute(1, 2, 0).numpy(), flip, tx, ty, k)
            got = out[index * 2 + n].permute(1, 2, 0).numpy()
            np.testing.assert_allclose(got, want, atol=1e-12, err_msg=f"transformation {index}")
    assert len({tuple(img.flatten().tolist()) for img in out[::2]}) == 72  # all distinct


def test_one_transformation_each_picks_the_rows_of_the_full_set_and_labels_are_balanced():
    x = torch.randn(10, 3, 8, 8)
    labels = balanced_labels(10, "rotations", torch.Generator().manual_seed(0))
    assert sorted(torch.bincount(labels, minlength=4).tolist()) == [2, 2, 3, 3]
    full = apply_transforms(x, "rotations")
    assert torch.equal(apply_one_each(x, labels, "rotations"), full[labels * 10 + torch.arange(10)])


def test_transforms_export_to_onnx_with_a_dynamic_batch():
    ort = pytest.importorskip("onnxruntime")

    class All(torch.nn.Module):
        def forward(self, x):
            return apply_transforms(x, "geotrans")

    f = io.BytesIO()
    torch.onnx.export(
        All(), (torch.randn(2, 3, 32, 32),), f, dynamo=False, input_names=["image"], dynamic_axes={"image": {0: "n"}}
    )
    x = torch.randn(5, 3, 32, 32)
    (got,) = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    np.testing.assert_array_equal(got, apply_transforms(x, "geotrans").numpy())


def test_an_unknown_set_is_refused_naming_the_key(tiny_cifar):
    with pytest.raises(UserError, match=r"model.self_supervised='rotation': use null \(off\) or one of rotations, geotrans"):
        transform_count("rotation")
    with pytest.raises(UserError, match="model.self_supervised="):
        check_config(compose_config([*tiny_overrides(tiny_cifar), "model.self_supervised=rotation"]))
    with pytest.raises(UserError, match="model.ss_weight_g=-0.1 is not allowed"):
        check_config(compose_config([*tiny_overrides(tiny_cifar), "model.ss_weight_g=-0.1"]))


# --- D's head --------------------------------------------------------------------------------------
def test_d_without_a_head_has_exactly_the_plain_dcgan_state_dict():
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    want = [f"features.{i}.weight" for i in (0,)] + [f"features.1.{b}" for b in bn]
    want += ["features.3.weight"] + [f"features.4.{b}" for b in bn] + ["features.6.weight"] + [f"features.7.{b}" for b in bn]
    want += ["head.weight"]
    assert list(Discriminator(3, 32, 8).state_dict()) == want
    assert list(Discriminator(3, 32, 8, transform_classes=0).state_dict()) == want
    with pytest.raises(ValueError, match="no transformation head"):
        Discriminator(3, 32, 8).transform_logits(torch.randn(1, 3, 32, 32))
    with_head = Discriminator(3, 32, 8, transform_classes=4)
    assert list(with_head.state_dict()) == [*want, "transform_head.weight", "transform_head.bias"]
    assert with_head.transform_head.in_features == 32 * 4 * 4
    sn = Discriminator(3, 32, 8, norm="none", spectral_norm=True, transform_classes=72)
    assert "transform_head.parametrizations.weight.original" in sn.state_dict()
    assert sn.transform_logits(torch.randn(2, 3, 32, 32)).shape == (2, 72)


def test_the_transformation_loss_of_a_head_set_by_hand_is_the_cross_entropy_computed_by_hand():
    model = GAN(**TINY, d_norm="none", self_supervised="rotations")
    bias = torch.tensor([2.0, 0.0, -1.0, 0.5])
    with torch.no_grad():  # logits = bias for every image, whatever it shows
        model.discriminator.transform_head.weight.zero_()
        model.discriminator.transform_head.bias.copy_(bias)
    torch.manual_seed(0)
    loss, accuracy = model._transform_loss(torch.randn(8, 3, 32, 32))
    # 8 images, each rotation twice: mean over labels of -log softmax(bias)[label]
    by_hand = float(np.mean([-np.log(np.exp(b) / np.exp(bias.numpy()).sum()) for b in bias.numpy()]))
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert accuracy.item() == 0.25  # always predicts rotation 0, which 2 of the 8 images have
    loss.backward()
    assert model.discriminator.transform_head.bias.grad.abs().sum() > 0


def test_the_head_learns_rotations_of_an_image_whose_rotations_differ():
    torch.manual_seed(0)
    model = GAN(**TINY, d_norm="none", self_supervised="rotations")
    x = torch.zeros(8, 3, 32, 32) - 1
    x[:, :, :8, :16] = 1.0  # a bar in the top-left: each rotation puts it elsewhere
    opt = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3)
    for _ in range(30):
        loss, accuracy = model._transform_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy.item() == 1.0 and loss.item() < 0.1
    logits = model.discriminator.transform_logits(apply_transforms(x[:1], "rotations"))
    assert logits.argmax(1).tolist() == [0, 1, 2, 3]


# --- training --------------------------------------------------------------------------------------
def loader(n_batches: int, batch_size: int = 8):
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 32, 32, generator=g) * 2 - 1} for _ in range(n_batches * batch_size)]
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(objective="wgan_gp", gp_weight=10.0, critic_steps=2, g_steps=1, d_norm="layer", spectral_norm=True, ema_decay=0.9),
        dict(d_norm="none", diffaugment="color,translation,cutout", self_supervised="geotrans"),
    ],
    ids=["bce", "wgan_gp_sn_ema", "diffaugment_geotrans"],
)
def test_training_adds_both_auxiliary_losses_and_logs_them(options):
    L.seed_everything(0)
    model = GAN(**TINY, **{"self_supervised": "rotations", **options})
    head_before = model.discriminator.transform_head.weight.detach().clone()
    t = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    t.fit(model, loader(3))
    m = t.callback_metrics
    for key in ("train/ss_loss_real_epoch", "train/ss_loss_fake_epoch", "train/ss_accuracy_real_epoch"):
        assert key in m and torch.isfinite(m[key]), key
    assert 0.0 <= float(m["train/ss_accuracy_real_epoch"]) <= 1.0
    assert not torch.equal(model.discriminator.transform_head.weight, head_before)  # D's head trained


def test_zero_weights_skip_the_auxiliary_losses():
    L.seed_everything(0)
    model = GAN(**TINY, self_supervised="rotations", ss_weight_d=0.0, ss_weight_g=0.0)
    t = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    t.fit(model, loader(2))
    assert not any(k.startswith("train/ss_") for k in t.callback_metrics)


def test_the_generator_loss_carries_alpha_times_the_generated_images_transformation_loss(monkeypatch):
    # With the transformation loss of every batch fixed at 1.5, G's loss is its BCE + alpha * 1.5
    # and D's is its BCE + beta * 1.5.
    L.seed_everything(0)
    model = GAN(**TINY, g_steps=1, self_supervised="rotations", ss_weight_d=0.7, ss_weight_g=0.3, scheduler=None)
    seen = {}
    real_g, real_d = model._g_loss, model._d_loss
    monkeypatch.setattr(model, "_transform_loss", lambda images: (torch.tensor(1.5, requires_grad=True), torch.tensor(0.5)))
    monkeypatch.setattr(model, "_g_loss", lambda d_gen: seen.setdefault("g", real_g(d_gen)))
    monkeypatch.setattr(model, "_d_loss", lambda a, b, c=None: seen.setdefault("d", real_d(a, b, c)))
    t = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    t.fit(model, loader(1))
    m = t.callback_metrics
    assert float(m["train/loss_g_epoch"]) == pytest.approx(float(seen["g"].detach()) + 0.3 * 1.5, rel=1e-6)
    assert float(m["train/loss_d_epoch"]) == pytest.approx(float(seen["d"].detach()) + 0.7 * 1.5, rel=1e-6)


@pytest.mark.slow
def test_a_tiny_ssgan_run_trains_saves_and_reloads_d_with_its_head(tiny_cifar, tmp_path):
    train_in_process([*tiny_overrides(tiny_cifar, tmp_path), "model.self_supervised=rotations"])
    run = tmp_path / "run"
    meta = json.loads((run / "gan" / "gan.json").read_text())
    assert meta["self_supervised"] == "rotations"
    g, d, _ = gan_store.load_gan_folder(run / "gan")
    assert d.transform_classes == 4
    saved = torch.load(run / "gan" / "discriminator.pt", weights_only=True)
    assert torch.equal(d.transform_head.weight, saved["transform_head.weight"])
    health = json.loads((run / "metrics.json").read_text())["gan_health"]  # what the pipeline reports
    assert health == meta["health"] and set(health["thresholds"]) == set(DEFAULT_HEALTH)
    assert health["ok"] is True and health["warning"] is None  # 1 epoch < model.health.epochs: nothing flagged
    payload = read_artifact(run / "scorer.pt")
    assert payload["gan_arch"]["self_supervised"] == "rotations"
    _, d2 = gan_from_artifact(payload)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(d2.transform_logits(x), d.eval().transform_logits(x))
    # the cached GAN (same key) is the same D with its head; another set is another cache entry
    cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), "model.self_supervised=rotations"])
    key, spec = gan_cache.cache_key(cfg)
    assert spec["model"]["self_supervised"] == "rotations"
    assert gan_cache.cache_key(compose_config(tiny_overrides(tiny_cifar, tmp_path)))[0] != key
    entry = gan_cache.load_cache_entry(tmp_path / "gan_cache" / key, key, {k: cfg.model[k] for k in gan_store.ARCH_KEYS})
    assert entry is not None and torch.equal(entry[1].transform_head.weight, saved["transform_head.weight"])
    # a checkpoint of the plain architecture refuses to load it, naming the key
    with pytest.raises(gan_store.GANLoadError, match="self_supervised: checkpoint rotations vs config None"):
        gan_store.load_checkpoint(run, {**{k: cfg.model[k] for k in gan_store.ARCH_KEYS}, "self_supervised": None})


# --- health ----------------------------------------------------------------------------------------
def test_diversity_is_zero_for_identical_samples_and_one_for_the_real_images_themselves():
    g = torch.Generator().manual_seed(0)
    reals = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1
    assert diversity_ratio(reals[:1].repeat(16, 1, 1, 1), reals) == 0.0
    assert diversity_ratio(reals, reals) == pytest.approx(1.0)
    # brute force: every pair once
    pairs = [(reals[i] - reals[j]).norm().item() for i in range(16) for j in range(i + 1, 16)]
    assert mean_pairwise_distance(reals) == pytest.approx(float(np.mean(pairs)), rel=1e-9)
    assert diversity_ratio(reals * 0.5, reals) == pytest.approx(0.5)


def test_the_same_noisy_pattern_for_every_sample_is_a_collapse_though_its_pixels_differ():
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checkerboard = (((y // 2 + x // 2) % 2) * 2 - 1).float().expand(32, 3, 32, 32)
    samples = checkerboard + 0.3 * torch.randn(32, 3, 32, 32, generator=g)  # one pattern, pixel noise
    # real images with different layouts: random ±1 on a 4×4 grid of 8-px cells
    reals = F.interpolate((torch.randint(0, 2, (32, 3, 4, 4), generator=g) * 2 - 1).float(), scale_factor=8.0)
    limit = DEFAULT_HEALTH["collapse_ratio"]
    assert mean_pairwise_distance(samples) / mean_pairwise_distance(reals) > 2 * limit  # pixel by pixel: not flagged
    assert diversity_ratio(samples, reals) < limit  # 8×8 layouts: one image, flagged


def _epochs(monitor, n, diversity, d_real=0.6, d_fake=0.3, loss_g=(1.0, 1.0)):
    losses = np.linspace(*loss_g, n)
    new = []
    for i in range(n):
        new += monitor.update(len(monitor.history), diversity, d_real, d_fake, float(losses[i]))
    return new


def test_identical_samples_are_flagged_as_collapse_after_the_patience_and_diverse_ones_are_not():
    monitor = HealthMonitor(DEFAULT_HEALTH)
    assert _epochs(monitor, 2, diversity=0.01) == [] and monitor.warning() is None  # not yet 3 epochs
    assert _epochs(monitor, 1, diversity=0.01) == ["collapse"]
    line = monitor.warning()
    assert "mode collapse" in line and "0.010 x that of real training images" in line and "model.diffaugment" in line
    assert "\n" not in line and "overpowering" not in line
    assert "that use G (latent search, encoder) are not to be trusted" in line and "read only D" in line
    assert monitor.summary()["ok"] is False and monitor.summary()["flags"] == ["collapse"]
    healthy = HealthMonitor(DEFAULT_HEALTH)
    assert _epochs(healthy, 10, diversity=0.8) == [] and healthy.summary()["ok"] is True
    assert _epochs(healthy, 2, diversity=0.01) == [] and healthy.warning() is None  # 2 bad epochs < 3


def test_d_overpowering_g_needs_saturated_outputs_and_a_growing_g_loss():
    monitor = HealthMonitor(DEFAULT_HEALTH)
    assert _epochs(monitor, 3, diversity=0.8, d_real=0.97, d_fake=0.03, loss_g=(2.0, 2.0)) == []  # G's loss never grew
    assert _epochs(monitor, 3, diversity=0.8, d_real=0.97, d_fake=0.03, loss_g=(2.5, 3.0)) == ["overpowered"]
    line = monitor.warning()
    assert "D overpowering G (mean D(x) 0.970 > 0.9 and D(G(z)) 0.030 < 0.1 for 3 epochs, G loss up from 2.00 to 3.00)" in line
    # the texture run's end: G's loss flat at ~3.4 for the last epochs, far above its start
    plateau = HealthMonitor(DEFAULT_HEALTH)
    _epochs(plateau, 2, diversity=0.8, loss_g=(0.01, 1.0))
    assert _epochs(plateau, 3, diversity=0.8, d_real=0.94, d_fake=0.06, loss_g=(3.46, 3.44)) == ["overpowered"]
    assert "model.spectral_norm=true" in line
    wgan = HealthMonitor(DEFAULT_HEALTH, bce=False)  # critic values are not probabilities: not checked
    assert _epochs(wgan, 5, diversity=0.8, d_real=0.97, d_fake=0.03, loss_g=(2.0, 3.0)) == []


def test_health_options_are_checked_naming_the_key(tiny_cifar):
    with pytest.raises(UserError, match=r"model.health.collapse_ratio=1.5 is not allowed"):
        check_config(compose_config([*tiny_overrides(tiny_cifar), "model.health.collapse_ratio=1.5"]))
    with pytest.raises(UserError, match=r"model.health.epochs=0 is not allowed"):
        check_config(compose_config([*tiny_overrides(tiny_cifar), "model.health.epochs=0"]))


class _Collapsed(torch.nn.Module):
    """A 'generator' that draws one fixed image whatever z is (a hand-built mode collapse)."""

    def __init__(self):
        super().__init__()
        self.image = torch.nn.Parameter(torch.zeros(1, 3, 32, 32))

    def forward(self, z):
        return torch.tanh(self.image).expand(z.shape[0], -1, -1, -1) + 0 * z.flatten(1).sum(1).view(-1, 1, 1, 1)


def test_a_collapsed_generator_is_flagged_during_training_with_one_warning_line(caplog):
    L.seed_everything(0)
    model = GAN(**TINY, scheduler=None, health={**DEFAULT_HEALTH, "epochs": 2})
    model.generator = _Collapsed()
    t = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with caplog.at_level(logging.WARNING, logger="anogan"):
        t.fit(model, loader(2))
    lines = [r.getMessage() for r in caplog.records if "the GAN failed" in r.getMessage()]
    assert len(lines) == 1 and "at epoch 1: mode collapse" in lines[0]  # flagged once, at the 2nd epoch
    summary = model.health_summary()
    assert summary["flags"] == ["collapse"] and summary["last_epochs"][-1]["diversity"] == 0.0
    assert float(t.callback_metrics["train/sample_diversity"]) == 0.0


def test_the_logged_diversity_is_that_of_the_fixed_noise_samples_against_the_first_real_images():
    L.seed_everything(0)
    model = GAN(**TINY, scheduler=None, n_samples=6)
    t = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    batches = loader(2)
    t.fit(model, batches)
    first = torch.cat([b["image"] for b in batches])[:6]
    assert torch.equal(model._health_reals, first)  # the first n_samples training images
    want = diversity_ratio(model.sample().float(), first)
    assert float(t.callback_metrics["train/sample_diversity"]) == pytest.approx(want, rel=1e-5)
    assert [h["epoch"] for h in model.health_monitor.history] == [0, 1] and model.health_summary()["ok"] is True


def test_the_benchmark_section_times_training_without_and_with_each_set():
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench

    a = bench.parse_args(["--sizes", "32", "--train-batch-size", "8", "--ssgan-steps", "1", "--warmup", "1", "--rounds", "1"])
    d = {**bench.project_defaults(), "latent_dim": 8, "width": 8, "d_width": 8}
    r = bench.bench_ssgan(a, d)
    for name in ("rotations", "geotrans"):
        assert r[f"{name}_epoch_time_ratio"] == round(r["off_img_s"] / r[f"{name}_img_s"], 3)
    assert r["batch_size"] == 8 and r["image_size"] == 32 and r["precision"] == "32-true"
