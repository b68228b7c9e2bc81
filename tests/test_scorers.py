"""The scorer family: each scorer's formula, exactness under batching and early stopping, the
anomaly map, the one inference path (resumable), the scorer file, and train.py end to end."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from anogan.engine.artifact import load_artifact, save_artifact
from anogan.engine.inference import run_scorer
from anogan.scorers import EncoderScorer, EncoderSearch, LatentMapping, anomaly_map, izif_components
from conftest import CPU, random_split, read_scores, small_nets, tiny_overrides
from conftest import train_in_process as run_train


def test_izif_formula_on_a_hand_made_case():
    x = torch.zeros(1, 1, 2, 2)
    generated = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])  # residual = (1 + 1 + 0.25 + 0) / 4
    fx, fg = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 0.0, 4.0]])  # discrimination = (0 + 4 + 1) / 3
    score, residual, discrimination = izif_components(x, fx, generated, fg, kappa=0.5)
    assert abs(residual.item() - 2.25 / 4) < 1e-7 and abs(discrimination.item() - 5 / 3) < 1e-6
    assert abs(score.item() - (2.25 / 4 + 0.5 * 5 / 3)) < 1e-6


def test_encoder_training_reduces_its_loss_and_trains_only_the_encoder():
    g, d = small_nets()
    with torch.no_grad():  # "normal" images: the ones G can make, so E can learn to invert G
        images = g(torch.randn(64, 16, generator=torch.Generator().manual_seed(5)))
    loader = DataLoader([{"image": x, "row": i} for i, x in enumerate(images)], batch_size=16, shuffle=True)
    frozen = [t.clone() for t in [*g.parameters(), *d.parameters(), *g.buffers(), *d.buffers()]]
    scorer = EncoderScorer(g, d, width=8, kappa=1.0, lr=1e-3, epochs=15, seed=0)
    before = scorer.infer(images, None)["score"].mean().item()
    scorer.fit(loader, {**CPU, "logger": False})
    after = scorer.infer(images, None)["score"].mean().item()
    assert after < 0.75 * before, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(frozen, [*g.parameters(), *d.parameters(), *g.buffers(), *d.buffers()]))
    assert not g.training and not d.training


def test_encoder_scores_through_the_inference_path_equal_the_formula():
    g, d = small_nets()
    scorer = EncoderScorer(g, d, width=8, kappa=0.7, seed=3, batch_size=4)
    data = random_split(10)
    res = run_scorer(scorer, data, CPU)
    assert torch.equal(res["row"], torch.arange(10))
    x = torch.stack([data[i]["image"] for i in range(10)])
    with torch.no_grad():
        z = scorer.encoder(x)
        generated = g(z)
        residual = ((x - generated) ** 2).mean((1, 2, 3))
        discrimination = ((d.features(x) - d.features(generated)) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(res["z"], z)
    torch.testing.assert_close(res["residual"], residual)
    torch.testing.assert_close(res["score"], residual + 0.7 * discrimination)
    assert res["map"].shape == (10, 32, 32)


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_early_stopping_is_exact_per_image_and_stops_early(alpha):
    g, d = small_nets()
    stop = {"patience": 3, "rel_tol": 1e-3}
    scorer = LatentMapping(g, d, alpha=alpha, iterations=60, lr=0.2, early_stop=stop)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    z0 = torch.randn(6, 16)
    batched = scorer.search(x, z0)
    assert batched["steps"].min() < 60 and len(set(batched["steps"].tolist())) > 1  # images stop at different steps
    alone = [scorer.search(x[i : i + 1], z0[i : i + 1]) for i in range(6)]
    for i, one in enumerate(alone):  # the same stopping step and the same z (up to convolution rounding)
        assert one["steps"].item() == batched["steps"][i].item(), i
        torch.testing.assert_close(one["z"][0], batched["z"][i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(one["score"][0], batched["score"][i], rtol=1e-5, atol=0)
    # a stopped image's z is its z after exactly `steps` plain steps: nothing changes it afterwards
    i = int(torch.argmin(batched["steps"]))
    scorer.hparams.early_stop = None
    scorer.hparams.iterations = int(batched["steps"][i])
    assert torch.equal(scorer.search(x[i : i + 1], z0[i : i + 1])["z"][0], alone[i]["z"][0])


def test_encoder_search_starts_at_the_encoders_latent_and_refines_it():
    g, d = small_nets()
    enc = {"width": 8, "kappa": 1.0, "epochs": 1, "lr": 1e-4, "betas": [0.5, 0.999]}
    hybrid = EncoderSearch(g, d, encoder=enc, iterations=0, lr=0.05, map_sigma=0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    z_e = hybrid.encoder(x).detach()
    torch.testing.assert_close(hybrid.infer(x, None)["z"], z_e)
    hybrid.hparams.iterations = 20
    refined = hybrid.infer(x, None)
    start = LatentMapping(g, d, alpha=0.0, iterations=0).search(x, z_e)["score"]
    assert (refined["score"] < start).all() and refined["steps"].tolist() == [20] * 4


def test_anomaly_map_peaks_on_the_changed_region_and_smoothing_keeps_mass():
    x = torch.zeros(2, 3, 32, 32)
    generated = x.clone()
    generated[0, :, 10:14, 20:24] = 0.8  # a defect in image 0 only
    maps = anomaly_map(x, generated, sigma=0)
    assert maps.shape == (2, 32, 32) and maps[1].abs().max() == 0
    assert torch.allclose(maps[0, 10:14, 20:24], torch.full((4, 4), 0.8))
    smoothed = anomaly_map(x, generated, sigma=1.5)
    peak = divmod(int(torch.argmax(smoothed[0])), 32)
    assert 10 <= peak[0] < 14 and 20 <= peak[1] < 24
    assert abs(smoothed[0].sum() - maps[0].sum()) < 1e-3 * maps[0].sum()  # reflect padding: no mass lost away from borders


def test_bf16_true_keeps_z_in_float32_and_every_coordinate_moves():
    g, d = small_nets()
    scorer = LatentMapping(g, d, alpha=0.0, iterations=5, lr=0.05, batch_size=4)
    data = random_split(4)
    res = run_scorer(scorer, data, {**CPU, "precision": "bf16-true"})
    from anogan.scorers import initial_latents

    z0 = initial_latents(torch.tensor([data[i]["key"] for i in range(4)]), 16, 0)
    assert res["z"].dtype == torch.float32
    moved = (res["z"] != z0).float().mean().item()
    assert moved > 0.99, moved


class _Interrupt(Exception):
    pass


def test_interrupted_scoring_resumes_and_equals_an_uninterrupted_run(tmp_path):
    import lightning as L

    g, d = small_nets()
    data = random_split(10)
    full = run_scorer(LatentMapping(g, d, iterations=4, lr=0.05, batch_size=3), data, CPU)

    class StopAfterTwoBatches(L.Callback):
        def on_predict_batch_end(self, trainer, *args, **kwargs):
            if len(list((tmp_path / "cache").glob("part-*.pt"))) >= 2:
                raise _Interrupt

    scorer = LatentMapping(g, d, iterations=4, lr=0.05, batch_size=3)
    with pytest.raises(_Interrupt):
        run_scorer(scorer, data, CPU, cache_dir=tmp_path / "cache", callbacks=[StopAfterTwoBatches()])
    assert len(list((tmp_path / "cache").glob("part-*.pt"))) == 2
    resumed = run_scorer(LatentMapping(g, d, iterations=4, lr=0.05, batch_size=3), data, CPU, cache_dir=tmp_path / "cache")
    for key in ("row", "score", "residual", "discrimination", "z", "map", "steps"):
        assert torch.equal(resumed[key], full[key]), key
    # another scorer (other settings) never reuses those batches
    other = run_scorer(LatentMapping(g, d, iterations=5, lr=0.05, batch_size=3), data, CPU, cache_dir=tmp_path / "cache")
    assert not torch.equal(other["z"], full["z"])


@pytest.mark.parametrize("kind", ["latent", "encoder", "hybrid"])
def test_scorer_file_round_trip_gives_identical_scores(kind, tmp_path):
    g, d = small_nets()
    enc = {"width": 8, "kappa": 1.0, "epochs": 1, "lr": 1e-4, "betas": [0.5, 0.999]}
    scorer = {
        "latent": lambda: LatentMapping(g, d, alpha=0.3, iterations=3, seed=5),
        "encoder": lambda: EncoderScorer(g, d, width=8),
        "hybrid": lambda: EncoderSearch(g, d, encoder=enc, iterations=2),
    }[kind]()
    data = random_split(5)
    want = run_scorer(scorer, data, CPU)
    arch = {"latent_dim": 16, "channels": 3, "image_size": 32, "g_width": 8, "d_width": 8}
    calibration = {
        "correction": "none",
        "thresholds": {"fpr": 1.0, "f1": None, "youden": None},
        "threshold_rule": "fpr",
        "target_fpr": 0.05,
        "normal_scores": torch.arange(5.0, dtype=torch.float64),
    }
    path = save_artifact(
        tmp_path / "scorer.pt", scorer, arch, calibration, {"image_size": 32, "channels": 3, "resize": "stretch"}, "32-true", {}
    )
    loaded, payload = load_artifact(path)
    assert type(loaded) is type(scorer) and payload["calibration"]["thresholds"]["fpr"] == 1.0
    got = run_scorer(loaded, data, CPU)
    for key in ("score", "z", "map"):
        assert torch.equal(got[key], want[key]), key


def test_train_end_to_end_with_each_scorer(tiny_cifar, tmp_path):
    for name, extra in (("encoder", []), ("encoder_search", ["mapping.early_stop={patience:1,rel_tol:0.5}"])):
        out = tmp_path / name
        run_train([*tiny_overrides(tiny_cifar, out, mapping=name), *extra])
        run = out / "run"
        rows, _ = read_scores(run)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["images_scored"] == len(rows) and (run / "scorer.pt").is_file()
        if name == "encoder":
            for r in rows:
                assert abs(float(r["score"]) - (float(r["residual"]) + float(r["discrimination"]))) <= 1e-5 * float(r["score"])
        else:
            steps = [int(r["steps"]) for r in rows]
            assert max(steps) <= 2 and min(steps) >= 1
        assert (run / "figures" / "examples_most_anomalous.png").is_file()
        assert not (run / "scoring").exists()  # the resumable cache is dropped once scores.csv is written


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scoring_on_a_gpu_matches_the_cpu():
    g, d = small_nets()
    data = random_split(8)
    cpu = run_scorer(LatentMapping(g, d, alpha=0.3, iterations=5, lr=0.05, batch_size=4), data, CPU)
    gpu = run_scorer(LatentMapping(g, d, alpha=0.3, iterations=5, lr=0.05, batch_size=4), data, {**CPU, "accelerator": "gpu"})
    torch.testing.assert_close(gpu["score"], cpu["score"], rtol=1e-3, atol=1e-3)
    bf16 = run_scorer(
        LatentMapping(g, d, alpha=0.0, iterations=5, lr=0.05, batch_size=4),
        data,
        {**CPU, "accelerator": "gpu", "precision": "bf16-true"},
    )
    assert bf16["z"].dtype == torch.float32
