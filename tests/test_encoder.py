"""The f-AnoGAN encoder scorer (mapping=encoder): training, the score formula, train.py end to end."""

import json

import lightning as L
import torch
from torch.utils.data import DataLoader

from anogan.models import Discriminator, Generator
from anogan.scorers.encoder import EncoderScorer, izif_components, load_encoder
from conftest import tiny_overrides
from test_train_e2e import read_scores, run_train


def _nets(latent=16, size=32, width=8):
    torch.manual_seed(0)
    g, d = Generator(latent, 3, size, width), Discriminator(3, size, width)
    # exact (cumulative) BatchNorm statistics, so that G in eval mode makes varied images
    for m in list(g.modules()) + list(d.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    g.train(), d.train()
    with torch.no_grad():
        for _ in range(3):
            d(g(torch.randn(64, latent, 1, 1)))
    return g, d


def _trainer(**kw):
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kw,
    )


def test_encoder_training_reduces_its_loss_and_trains_only_the_encoder():
    g, d = _nets()
    g.eval()
    with torch.no_grad():  # "normal" images: the ones G can make, so E can learn to invert G
        images = g(torch.randn(64, 16, generator=torch.Generator().manual_seed(5)))
    loader = DataLoader([{"image": x, "row": i} for i, x in enumerate(images)], batch_size=16, shuffle=True)
    frozen = [t.clone() for t in [*g.parameters(), *d.parameters(), *g.buffers(), *d.buffers()]]
    scorer = EncoderScorer(g, d, channels=3, image_size=32, width=8, kappa=1.0, lr=1e-3, seed=0)
    assert scorer.encoder.training and not g.training and not d.training
    with torch.no_grad():
        before = scorer.score_batch(images)["score"].mean().item()
    trainer = _trainer(max_epochs=15)
    trainer.fit(scorer, train_dataloaders=loader)
    with torch.no_grad():
        after = scorer.score_batch(images)["score"].mean().item()
    assert after < 0.75 * before, (before, after)
    assert trainer.callback_metrics["encoder/loss_epoch"] < 0.75 * before
    # G and D: not a weight trained, not a BatchNorm statistic updated, still in eval mode
    assert all(torch.equal(a, b) for a, b in zip(frozen, [*g.parameters(), *d.parameters(), *g.buffers(), *d.buffers()]))
    assert not g.training and not d.training


def test_izif_formula_on_a_hand_made_case():
    x = torch.zeros(1, 1, 2, 2)
    generated = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])  # residual = (1 + 1 + 0.25 + 0) / 4
    fx, fg = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 0.0, 4.0]])  # discrimination = (0 + 4 + 1) / 3
    score, residual, discrimination = izif_components(x, fx, generated, fg, kappa=0.5)
    assert abs(residual.item() - 2.25 / 4) < 1e-7 and abs(discrimination.item() - 5 / 3) < 1e-6
    assert abs(score.item() - (2.25 / 4 + 0.5 * 5 / 3)) < 1e-6


def test_encoder_score_equals_the_formula_on_its_components():
    g, d = _nets()
    kappa = 0.7
    scorer = EncoderScorer(g, d, channels=3, image_size=32, width=8, kappa=kappa, seed=3)
    torch.manual_seed(1)
    x = torch.rand(10, 3, 32, 32) * 2 - 1
    order = torch.randperm(10)  # rows arrive out of order: results come back sorted by row
    loader = DataLoader([{"image": x[i], "row": i} for i in order.tolist()], batch_size=4)
    _trainer().test(scorer, dataloaders=loader, verbose=False)
    res = scorer.results
    assert set(res) == {"row", "score", "residual", "discrimination", "z"}
    assert torch.equal(res["row"], torch.arange(10))
    with torch.no_grad():
        z = scorer.encoder(x)
        generated = g(z)
        residual = ((x - generated) ** 2).mean((1, 2, 3))
        discrimination = ((d.features(x) - d.features(generated)) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(res["z"], z)
    torch.testing.assert_close(res["residual"], residual)
    torch.testing.assert_close(res["discrimination"], discrimination)
    torch.testing.assert_close(res["score"], res["residual"] + kappa * res["discrimination"])
    # an image's score does not depend on its batch
    alone = scorer.score_batch(x[4:5])["score"]
    torch.testing.assert_close(alone, res["score"][4:5], rtol=1e-5, atol=0)


def test_train_end_to_end_with_the_encoder(tiny_cifar, tmp_path):
    run_train([*tiny_overrides(tiny_cifar, tmp_path), "mapping=encoder", "mapping.epochs=2"])
    run = tmp_path / "run"
    rows, _ = read_scores(run)
    n_eval = len(rows)
    kappa = 1.0
    for r in rows:
        assert abs(float(r["score"]) - (float(r["residual"]) + kappa * float(r["discrimination"]))) <= 1e-5 * float(r["score"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images_scored"] == n_eval and 0.0 <= metrics["test"]["auroc"] <= 1.0
    encoder, meta = load_encoder(run / "encoder")
    assert meta["kappa"] == kappa and encoder.latent_dim == 16
    assert (run / "figures" / "reconstructions_normal.png").is_file()
