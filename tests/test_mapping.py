import pytest
import torch

from anogan.models import Discriminator, Generator
from anogan.scorers import LatentMapping, initial_latents, score_components
from anogan.utils.errors import UserError


def _nets(latent=16, size=32, width=8):
    torch.manual_seed(0)
    g, d = Generator(latent, 3, size, width), Discriminator(3, size, width)
    # non-trivial BatchNorm running statistics, so eval mode really matters
    g.train(), d.train()
    with torch.no_grad():
        for _ in range(3):
            d(g(torch.randn(16, latent, 1, 1)))
    return g, d


def test_batched_search_equals_one_image_at_a_time():
    g, d = _nets()
    mapping = LatentMapping(g, d, alpha=0.3, iterations=25, lr=0.05)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    z0 = torch.randn(6, 16)
    batched = mapping.search(x, z0)
    for i in range(6):
        alone = mapping.search(x[i : i + 1], z0[i : i + 1])
        for key in ("score", "residual", "discrimination"):
            rel = (batched[key][i] - alone[key][0]).abs() / alone[key][0].abs()
            assert rel <= 1e-5, (key, i, rel.item())


def test_alpha_zero_search_follows_the_residual_alone_and_still_reports_discrimination():
    g, d = _nets()
    mapping = LatentMapping(g, d, alpha=0.0, iterations=10, lr=0.05)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z0 = torch.randn(3, 16)
    out = mapping.search(x, z0)
    gen, disc = mapping.search_networks(channels_last=True)
    z = z0.clone().view(3, -1, 1, 1).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(10):  # the reference: Adam on the residual, D never called
        loss = (x.contiguous(memory_format=torch.channels_last) - gen(z)).abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(out["z"], z.detach().flatten(1), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        want = (disc.features(x) - disc.features(gen(z))).abs().flatten(1).sum(1)
    assert torch.allclose(out["discrimination"], want, rtol=1e-5) and torch.equal(out["score"], out["residual"])


def test_search_reduces_the_loss_and_trains_no_network_weight():
    g, d = _nets()
    before = [p.clone() for p in list(g.parameters()) + list(d.parameters())]
    mapping = LatentMapping(g, d, alpha=0.5, iterations=0, lr=0.05)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    z0 = torch.randn(4, 16)
    start = mapping.search(x, z0)["score"]
    mapping.hparams.iterations = 30
    end = mapping.search(x, z0)["score"]
    assert (end < start).all()
    assert all(torch.equal(a, b) for a, b in zip(before, list(g.parameters()) + list(d.parameters())))
    assert not g.training and not d.training


def test_score_formula_on_a_hand_made_case():
    x = torch.zeros(1, 1, 2, 2)
    generated = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])  # residual = 1 + 1 + 0.5 + 0 = 2.5
    fx = torch.tensor([[1.0, 2.0, 3.0]])
    fg = torch.tensor([[1.0, 0.0, 4.0]])  # discrimination = 0 + 2 + 1 = 3
    score, residual, discrimination = score_components(x, fx, generated, fg, alpha=0.1)
    assert residual.item() == 2.5 and discrimination.item() == 3.0
    assert abs(score.item() - (0.9 * 2.5 + 0.1 * 3.0)) < 1e-6


def test_initial_latent_depends_on_image_key_not_on_batch():
    keys = torch.tensor([11, 22, 33])
    together = initial_latents(keys, 8, seed=5)
    assert torch.equal(together[1], initial_latents(torch.tensor([22]), 8, seed=5)[0])
    assert not torch.equal(together[0], together[1])
    assert not torch.equal(together, initial_latents(keys, 8, seed=6))


def test_broken_weights_stop_the_search_with_a_message():
    g, d = _nets()
    with torch.no_grad():
        next(g.parameters()).fill_(float("nan"))
    mapping = LatentMapping(g, d, alpha=0.5, iterations=2)
    batch = {"image": torch.rand(3, 3, 32, 32) * 2 - 1, "key": torch.arange(3), "row": torch.arange(3)}
    with pytest.raises(UserError, match=r"3 anomaly score\(s\) are NaN/inf: the GAN"):
        mapping.predict_step(batch)
