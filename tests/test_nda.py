"""Negative data augmentation (model.nda) and the scorer that reads D's own logit (mapping=dlogit)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from anogan.config.checks import check_config
from anogan.config.gan_options import parse_nda
from anogan.engine.artifact import load_artifact, save_artifact
from anogan.engine.inference import run_scorer
from anogan.models import nda
from anogan.models.gan import GAN
from anogan.post_processing.calibration import Calibration
from anogan.scorers import DFeatureScorer, DLogitScorer
from anogan.scorers.discriminator import ScorerConfigError
from anogan.utils.errors import UserError
from conftest import CPU, compose_config, random_split, small_nets, tiny_overrides

TINY = dict(latent_dim=16, image_size=32, g_width=8, d_width=8)


def _loader(n_batches: int, batch_size: int = 8):
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 32, 32, generator=g) * 2 - 1} for _ in range(n_batches * batch_size)]
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


# --- the negatives ---------------------------------------------------------------------------------
def test_jigsaw_moves_each_quarter_to_its_new_place():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    order = torch.tensor([[1, 0, 3, 2], [3, 2, 1, 0]])  # swap left/right; reverse all four
    out = nda.jigsaw(x, order)
    q = lambda img, k: img[0, 2 * (k // 2) : 2 * (k // 2) + 2, 2 * (k % 2) : 2 * (k % 2) + 2]  # noqa: E731
    for n in range(2):
        for k in range(4):
            assert torch.equal(q(out[n], int(order[n, k])), q(x[n], k))


def test_cutout_zeroes_exactly_the_square():
    x = torch.ones(2, 3, 8, 8)
    out = nda.cutout(x, torch.tensor([0, 4]), torch.tensor([2, 4]), 4)
    assert torch.equal(out[0, :, 0:4, 2:6], torch.zeros(3, 4, 4)) and int((out[0] == 0).sum()) == 3 * 16
    assert torch.equal(out[1, :, 4:8, 4:8], torch.zeros(3, 4, 4)) and int((out[1] == 0).sum()) == 3 * 16


def test_every_negative_is_one_of_its_transformations_of_its_own_image_and_never_the_image():
    x = torch.rand(24, 3, 8, 8) * 2 - 1
    out = nda.negatives(x, ("jigsaw", "cutout", "rotation"), torch.Generator().manual_seed(0))
    kinds = set()
    for img, neg in zip(x, out):
        assert not torch.equal(img, neg)
        rotations = [torch.rot90(img, k, dims=(1, 2)) for k in (1, 2, 3)]
        if any(torch.equal(neg, r) for r in rotations):
            kinds.add("rotation")
        elif (neg == 0).sum() >= 3 * 16 and torch.equal(neg[neg != 0], img[neg != 0]):
            kinds.add("cutout")
        else:  # the same 4 quarters, rearranged
            quarters = lambda t: sorted(t[:, r : r + 4, c : c + 4].flatten().tolist() for r in (0, 4) for c in (0, 4))  # noqa: E731
            assert quarters(neg) == quarters(img)
            kinds.add("jigsaw")
    assert kinds == {"jigsaw", "cutout", "rotation"}
    assert torch.equal(out, nda.negatives(x, ("jigsaw", "cutout", "rotation"), torch.Generator().manual_seed(0)))


def test_nda_values_are_parsed_and_bad_ones_refused_naming_the_key(tiny_cifar):
    assert parse_nda(None) == () and parse_nda("cutout, jigsaw,cutout") == ("cutout", "jigsaw")
    with pytest.raises(UserError, match="model.nda='flip'"):
        parse_nda("flip")
    with pytest.raises(UserError, match="model.nda_weight=1.0"):
        GAN(**TINY, nda="jigsaw", nda_weight=1.0)
    for override, key in (("model.nda=flip", "model.nda"), ("model.nda_weight=0", "model.nda_weight")):
        with pytest.raises(UserError, match=key):
            check_config(compose_config([*tiny_overrides(tiny_cifar), override]))
    check_config(compose_config(tiny_overrides(tiny_cifar, mapping="dlogit")))  # model.nda='jigsaw,cutout,rotation' (conftest)


# --- D's loss -------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["bce", "wgan_gp"])
def test_d_loss_is_the_mixture_formula(objective):
    model = GAN(
        **TINY,
        nda="jigsaw",
        nda_weight=0.3,
        objective=objective,
        gp_weight=10.0 if objective == "wgan_gp" else 0.0,
        d_norm="layer",
    )
    real, fake, neg = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0]), torch.tensor([1.5, 0.2])
    got = model._d_loss(real, fake, neg)
    if objective == "bce":
        bce = F.binary_cross_entropy_with_logits
        want = bce(real, torch.ones(2)) + 0.7 * bce(fake, torch.zeros(2)) + 0.3 * bce(neg, torch.zeros(2))
        assert torch.allclose(model._d_loss(real, fake), bce(real, torch.ones(2)) + bce(fake, torch.zeros(2)))
    else:
        want = 0.7 * fake.mean() + 0.3 * neg.mean() - real.mean()
    assert torch.allclose(got, want, rtol=0, atol=1e-6), (got, want)


def test_training_shows_d_the_negatives_of_the_real_batch_with_the_mixture_loss(monkeypatch):
    """With a stub batch: D's loss in training is the formula on D's outputs for x, G(z) and negatives(x)."""
    L.seed_everything(0)
    model = GAN(**TINY, g_steps=1, nda="rotation", nda_weight=0.25, scheduler=None)
    seen: dict = {}
    shown: list = []
    real_negatives = nda.negatives

    def recording(x, names, generator=None):
        out = real_negatives(x, names, generator)
        shown.append((x.detach().clone(), out.detach().clone(), names))
        return out

    real_d_loss = model._d_loss

    def d_loss(d_real, d_fake, d_negative=None):
        seen.update(real=d_real.detach(), fake=d_fake.detach(), negative=None if d_negative is None else d_negative.detach())
        seen["loss"] = real_d_loss(d_real, d_fake, d_negative).detach()
        return real_d_loss(d_real, d_fake, d_negative)

    monkeypatch.setattr("anogan.models.gan.negatives", recording)
    monkeypatch.setattr(model, "_d_loss", d_loss)
    t = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    t.fit(model, _loader(1))
    x, negs, names = shown[0]
    assert names == ("rotation",) and x.shape == negs.shape == (8, 3, 32, 32)
    assert all(any(torch.equal(n, torch.rot90(i, k, dims=(1, 2))) for k in (1, 2, 3)) for i, n in zip(x, negs))
    bce = F.binary_cross_entropy_with_logits
    r, f, n = seen["real"].float(), seen["fake"].float(), seen["negative"].float()
    want = bce(r, torch.ones_like(r)) + 0.75 * bce(f, torch.zeros_like(f)) + 0.25 * bce(n, torch.zeros_like(n))
    assert torch.allclose(seen["loss"], want, atol=1e-6)
    assert float(t.callback_metrics["train/loss_d_epoch"]) == pytest.approx(float(want), rel=1e-5)
    assert "train/d_negative_epoch" in t.callback_metrics


def test_without_nda_d_sees_no_negatives(monkeypatch):
    monkeypatch.setattr("anogan.models.gan.negatives", lambda *a, **k: pytest.fail("negatives drawn without model.nda"))
    t = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    t.fit(GAN(**TINY, scheduler=None), _loader(1))
    assert "train/d_negative_epoch" not in t.callback_metrics


# --- mapping=dlogit -------------------------------------------------------------------------------
def test_dlogit_is_exactly_minus_d_logit_and_combines_with_the_transformation_head():
    g, d = small_nets(transform_classes=4)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        want = -d(x)
    out = DLogitScorer(g, d).infer(x)
    assert torch.equal(out["score"], want) and torch.equal(out["dlogit"], want) and "transformations" not in out
    both = DLogitScorer(g, d, transforms="rotations", combine=["dlogit", "transformations"]).infer(x)
    assert torch.equal(both["score"], want) and both["transformations"].shape == (6,)
    # dcombined may name dlogit in its combine list
    dfeat = DFeatureScorer(g, d, bank_size=5, patch_bank_size=50, combine=["dfeatures", "dlogit"])
    dfeat.fit(torch.utils.data.DataLoader(random_split(8), batch_size=4))
    assert torch.equal(dfeat.infer(x)["dlogit"], want)


def test_dlogit_refuses_a_map_an_unknown_component_and_a_missing_head():
    g, d = small_nets()
    with pytest.raises(ScorerConfigError, match="mapping.maps=true"):
        DLogitScorer(g, d, maps=True)
    with pytest.raises(ScorerConfigError, match="mapping.combine names \\['dfeatures'\\]"):
        DLogitScorer(g, d, combine=["dlogit", "dfeatures"])
    with pytest.raises(ScorerConfigError, match="model.self_supervised"):
        DLogitScorer(g, d, combine=["dlogit", "transformations"])


def test_dlogit_scorer_file_round_trip_gives_identical_scores(tmp_path):
    g, d = small_nets()
    scorer = DLogitScorer(g, d)
    data = random_split(5)
    want = run_scorer(scorer, data, CPU)
    arch = {"latent_dim": 16, "channels": 3, "image_size": 32, "g_width": 8, "d_width": 8}
    path = save_artifact(
        tmp_path / "scorer.pt",
        scorer,
        arch,
        Calibration.fit(torch.arange(30.0), torch.ones(30), torch.zeros(30, dtype=torch.long)),
        {"image_size": 32, "channels": 3, "resize": "stretch"},
        "32-true",
        {},
    )
    loaded, _ = load_artifact(path)
    assert type(loaded) is DLogitScorer
    got = run_scorer(loaded, data, CPU)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert "map" not in got and set(got) >= {"score", "dlogit"}
