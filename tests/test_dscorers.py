"""The scorers that read the discriminator: the transformation score, kNN distances in D's
feature space, the per-patch map, the scorer file, predict.py and the ONNX export."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from anogan.data.splits import AnomalySplit
from anogan.engine.artifact import load_artifact, save_artifact
from anogan.engine.inference import run_scorer
from anogan.models.transforms import TRANSFORM_SETS, apply_transform, apply_transforms, transform_labels
from anogan.post_processing.calibration import Calibration
from anogan.scorers import DFeatureScorer, TransformationScorer
from anogan.scorers.discriminator import ScorerConfigError, knn_distance, layer_outputs, pairwise_distances, subsample
from conftest import CPU, random_split, small_nets, tiny_overrides
from conftest import train_in_process as run_train


class MarkerHead(nn.Module):
    """A hand-set discriminator head: logit t = 10 · x[0] at where rotation t moves pixel (0, 0)."""

    def __init__(self, size: int = 8):
        super().__init__()
        self.transform_classes = 4
        self.features = nn.Sequential(nn.Conv2d(3, 4, 4, 2, 1), nn.LeakyReLU(0.2))
        marker = torch.zeros(1, 3, size, size)
        marker[0, 0, 0, 0] = 1.0
        rows = [apply_transform(marker, t)[0].flatten() for t in TRANSFORM_SETS["rotations"]]
        self.head = nn.Linear(3 * size * size, 4, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(10 * torch.stack(rows))

    def transform_logits(self, x):
        return self.head(x.flatten(1))


def _marker_images(size: int = 8):
    """A background of 0 with the marker pixel 1 at (0, 0) (the head classifies every rotation), and a
    plain image (all logits equal: the head cannot tell)."""
    marked = torch.zeros(1, 3, size, size)
    marked[0, 0, 0, 0] = 1.0
    return marked, torch.zeros(1, 3, size, size)


def test_transformation_score_is_low_when_the_head_is_right_and_log_t_times_t_when_it_cannot_tell():
    g, _ = small_nets()
    scorer = TransformationScorer(g, MarkerHead(), transforms="rotations")
    marked, plain = _marker_images()
    score = scorer.infer(torch.cat([marked, plain]))["score"]
    assert score[0] < 1e-3  # each rotation's right logit is 10 above the others: 4·log(1 + 3e^-10)
    assert score[0] == pytest.approx(4 * math.log1p(3 * math.exp(-10)), rel=1e-2)  # float32 rounding of logsumexp - 10
    assert score[1] == pytest.approx(4 * math.log(4), rel=1e-6)  # uniform over 4 classes, for each of the 4 copies


def test_transformation_score_equals_the_summed_cross_entropy_of_a_trained_head():
    g, d = small_nets(transform_classes=4)
    torch.nn.init.normal_(d.transform_head.weight, 0, 0.05)
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    got = TransformationScorer(g, d, transforms="rotations").infer(x)["transformations"]
    with torch.no_grad():
        ce = F.cross_entropy(
            d.transform_logits(apply_transforms(x, "rotations")), transform_labels(5, "rotations"), reduction="none"
        )
    torch.testing.assert_close(got, ce.view(4, 5).sum(0), rtol=1e-5, atol=1e-6)


def test_transformation_scorer_refuses_a_discriminator_without_its_head():
    g, d = small_nets()
    with pytest.raises(ScorerConfigError, match="model.self_supervised=rotations"):
        TransformationScorer(g, d, transforms="rotations")
    g, d = small_nets(transform_classes=4)
    with pytest.raises(ScorerConfigError, match="has 72 transformations but the discriminator's head has 4"):
        TransformationScorer(g, d, transforms="geotrans")
    with pytest.raises(ScorerConfigError, match="mapping.maps=true"):
        TransformationScorer(g, d, transforms="rotations", maps=True)


@pytest.mark.parametrize("chunk", [3, 4096])
def test_knn_distances_equal_brute_force(chunk):
    gen = torch.Generator().manual_seed(0)
    query, bank = torch.randn(11, 6, generator=gen), torch.randn(30, 6, generator=gen)
    for k in (1, 4, 30, 50):
        brute = torch.tensor([sorted(float(torch.dist(q, b)) for b in bank)[: min(k, 30)] for q in query]).mean(1)
        torch.testing.assert_close(knn_distance(query, bank, k, chunk=chunk), brute, rtol=1e-5, atol=1e-5)
    # a point's distance to itself: float64 keeps the cancellation in |a|² + |b|² − 2a·b small
    torch.testing.assert_close(pairwise_distances(query, query).diagonal(), torch.zeros(11), rtol=0, atol=1e-6)


def test_dfeatures_scores_are_the_brute_force_knn_of_the_pooled_features():
    g, d = small_nets()
    train, test = random_split(12, seed=1), random_split(4, seed=2)
    scorer = DFeatureScorer(g, d, k=3, layer=-1, pooling="max", bank_size=100, patch_bank_size=10_000)
    scorer.fit(DataLoader(train, batch_size=5, shuffle=True))
    x_train = torch.stack([train[i]["image"] for i in range(12)])
    x_test = torch.stack([test[i]["image"] for i in range(4)])
    with torch.no_grad():
        bank = d.features(x_train).amax((2, 3))  # the last block: the whole feature stack
        query = d.features(x_test).amax((2, 3))
    assert torch.equal(scorer.bank, bank)  # every training image once, in dataset order (bank_size not reached)
    brute = torch.tensor([sorted(float(torch.dist(q, b)) for b in bank)[:3] for q in query]).mean(1)
    torch.testing.assert_close(scorer.infer(x_test)["dfeatures"], brute, rtol=1e-5, atol=1e-5)


def test_greedy_coreset_keeps_the_outlier_and_random_is_a_seeded_subset():
    points = torch.cat([torch.randn(100, 3, generator=torch.Generator().manual_seed(0)) * 0.01, torch.full((1, 3), 50.0)])
    kept = subsample(points, 2, "greedy", seed=3)
    assert len(kept) == 2 and (kept == 50.0).all(1).any()
    a, b = subsample(points, 10, "random", seed=3), subsample(points, 10, "random", seed=3)
    assert torch.equal(a, b) and len(a) == 10
    assert torch.equal(subsample(points, 500, "greedy", seed=0), points)


def test_greedy_coreset_equals_the_textbook_k_center_loop():
    """Each new row is the one farthest from those chosen (Sener & Savarese 2018), distances as pairwise_distances."""
    bank = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    chosen = [int(torch.randint(300, (1,), generator=torch.Generator().manual_seed(4)))]
    while len(chosen) < 40:
        nearest = pairwise_distances(bank, bank[chosen]).amin(1)
        chosen.append(int(nearest.argmax()))
    assert torch.equal(subsample(bank, 40, "greedy", seed=4), bank[chosen])


def test_layer_outputs_name_the_blocks_and_refuse_a_missing_one():
    _, d = small_nets()
    x = torch.rand(2, 3, 32, 32)
    out = layer_outputs(d, x, [1, 2, -1])
    assert [tuple(out[k].shape[1:]) for k in (1, 2, -1)] == [(8, 16, 16), (16, 8, 8), (32, 4, 4)]
    with pytest.raises(ScorerConfigError, match="the discriminator has 3 feature blocks"):
        layer_outputs(d, x, [4])


def test_patch_map_peaks_on_a_pasted_patch():
    g, d = small_nets()
    gen = torch.Generator().manual_seed(0)
    # normal images: smooth colour gradients; the anomaly: one of them with an 8x8 noise patch pasted in
    ramp = torch.linspace(-1, 1, 32)
    normals = torch.stack(
        [
            (a * ramp[None, :] + b * ramp[:, None] + c).clamp(-1, 1).expand(3, 32, 32)
            for a, b, c in torch.rand(40, 3, generator=gen) - 0.5
        ]
    )
    uint8 = ((normals + 1) * 127.5).round().to(torch.uint8)
    scorer = DFeatureScorer(g, d, bank_size=40, patch_bank_size=4000, map_sigma=1.0)
    scorer.fit(DataLoader(AnomalySplit(uint8, np.zeros(40, dtype=np.int64), np.arange(40), 0), batch_size=16))
    x = normals[:1].clone()
    x[0, :, 16:24, 8:16] = torch.rand(3, 8, 8, generator=gen) * 2 - 1
    out = scorer.infer(torch.cat([normals[:1], x]))
    amap = out["map"][1]
    row, col = divmod(int(amap.argmax()), 32)
    assert 12 <= row < 28 and 4 <= col < 20, (row, col)  # within a cell (4 px) of the patch
    assert out["dpatches"][1] > 2 * out["dpatches"][0] and amap.max() > 2 * out["map"][0].max()


@pytest.mark.parametrize("kind", ["transformations", "dfeatures", "dcombined"])
def test_scorer_file_round_trip_gives_identical_scores(kind, tmp_path):
    g, d = small_nets(transform_classes=4)
    torch.nn.init.normal_(d.transform_head.weight, 0, 0.05)
    scorer = {
        "transformations": lambda: TransformationScorer(g, d, transforms="rotations"),
        "dfeatures": lambda: DFeatureScorer(g, d, bank_size=7, patch_bank_size=50, coreset="random"),
        "dcombined": lambda: DFeatureScorer(
            g, d, bank_size=7, patch_bank_size=50, transforms="rotations", combine=["transformations", "dfeatures"]
        ),
    }[kind]()
    if scorer.needs_fit:
        scorer.fit(DataLoader(random_split(12, seed=4), batch_size=5))
    data = random_split(5)
    want = run_scorer(scorer, data, CPU)
    arch = {"latent_dim": 16, "channels": 3, "image_size": 32, "g_width": 8, "d_width": 8, "self_supervised": "rotations"}
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
    assert type(loaded) is type(scorer)
    got = run_scorer(loaded, data, CPU)
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    if kind != "transformations":
        assert loaded.bank.shape == (7, 32) and loaded.patch_bank.shape == (50, 16)
    else:
        assert "map" not in got and "z" not in got


# each D scorer's tiny run: (its mapping, the overrides beyond tiny_overrides); dfeatures scores by its patches
# from a random coreset, dcombined_geotrans is the default recipe's scorer (72 transformations, a greedy
# coreset on projected cells, times_complexity)
D_RUNS = {
    "transformations": ("transformations", ["mapping.correction=complexity"]),
    "dfeatures": ("dfeatures", ["mapping.correction=complexity", "mapping.score=dpatches", "mapping.coreset=random"]),
    "dcombined": ("dcombined", ["mapping.correction=complexity"]),
    "dcombined_geotrans": (
        "dcombined",
        ["model.self_supervised=geotrans", "mapping.correction=times_complexity", "mapping.coreset_projection=8"],
    ),
    "dlogit": ("dlogit", ["mapping.correction=complexity"]),
}


@pytest.fixture(scope="module", params=list(D_RUNS))
def tiny_d_run(request, tiny_cifar, tmp_path_factory):
    mapping, extra = D_RUNS[request.param]
    out = tmp_path_factory.mktemp(f"drun_{request.param}")
    run_train([*tiny_overrides(tiny_cifar, out, mapping=mapping), *extra])
    return request.param, out / "run"


def test_train_predict_api_and_onnx_export_of_each_d_scorer(tiny_d_run, tmp_path):
    import onnxruntime as ort
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import anogan
    from anogan.cli.predict import predict
    from anogan.deploy.export import export
    from anogan.engine.artifact import read_artifact

    kind, run = tiny_d_run
    with open(run / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    components = {"transformations": ["transformations"], "dfeatures": ["dfeatures", "dpatches"], "dlogit": ["dlogit"]}.get(
        kind, ["transformations", "dfeatures", "dpatches"]
    )
    # scorer.pt holds the run's settings as given (every override above)
    mapping, extra = D_RUNS[kind]
    payload = read_artifact(run)
    given = dict(o.split("=", 1) for o in extra)
    assert payload["calibration"]["correction"] == given["mapping.correction"]
    for key, value in given.items():
        if key.startswith("mapping.") and key != "mapping.correction":
            assert str(payload["scorer"]["hparams"][key.split(".", 1)[1]]) == value, key
    if "transformations" in components:
        ss = given.get("model.self_supervised", "rotations")
        assert payload["gan_arch"]["self_supervised"] == ss and payload["scorer"]["hparams"]["transforms"] == ss
    no_map = kind in ("transformations", "dlogit")
    assert all(c in rows[0] for c in components) and "residual" not in rows[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(components) <= set(metrics["test_components_auroc"])
    assert (run / "figures" / "examples_most_anomalous.png").is_file() == (not no_map)

    cfg = OmegaConf.load(run / "config_resolved.yaml")
    dm = instantiate(cfg.data)
    dm.setup()
    chosen = list(range(0, len(rows), 5))[:10]
    images = dm.eval_set.images[chosen]
    # predict.py with the scorer file alone gives the run's scores
    from PIL import Image

    (tmp_path / "pngs").mkdir()
    for k, i in enumerate(chosen):
        Image.fromarray(images[k].permute(1, 2, 0).numpy()).save(tmp_path / "pngs" / f"row{i:03d}.png")
    result = predict(run, tmp_path / "pngs", out=tmp_path / "pred.csv", maps=not no_map)
    got = {r["path"].rsplit("row", 1)[1][:3]: r for r in result["rows"]}
    for i in chosen:
        assert abs(got[f"{i:03d}"]["score"] - float(rows[i]["score"])) <= 1e-5 * abs(float(rows[i]["score"]))
        for c in components:
            assert abs(got[f"{i:03d}"][c] - float(rows[i][c])) <= 1e-5 * abs(float(rows[i][c]))
    # the Python API on the images in memory gives the same
    api = anogan.load(run, device="cpu").predict(images)
    for k, i in enumerate(chosen):
        for c in ["score", "p_value", *components]:
            assert api[k][c] == pytest.approx(float(rows[i][c]), rel=1e-5), (i, c)

    # ONNX: the exported graph reproduces the run's primary and raw scores
    exported = export(run, out=tmp_path / "export", input=tmp_path / "pngs")
    assert exported["max_relative_difference"] <= 1e-4
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"image": images.float().div(127.5).sub(1.0).numpy()})))
    score, raw = outputs["score"], outputs["raw_score"]
    if no_map:
        assert "anomaly_map" not in names
    else:
        assert outputs["anomaly_map"].shape == (len(chosen), 32, 32)
    # relative to the score, or to the validation normals' spread where that is larger (a combined score is a sum of
    # z-scores: near 0 for a typical image, where float rounding relative to the score itself is unbounded)
    spread = float(np.std([float(r["score"]) for r in rows if r["split"] == "val" and r["label"] == "0"]))
    for k, i in enumerate(chosen):
        assert abs(outputs["p_value"][k] - float(rows[i]["p_value"])) < 1e-6
        for got_k, key in ((score[k], "score"), (raw[k], "raw_score")):
            assert abs(got_k - float(rows[i][key])) <= 1e-4 * max(abs(float(rows[i][key])), spread), (i, key, got_k, rows[i][key])


def test_dfeatures_needs_a_fit_and_names_bad_settings():
    g, d = small_nets()
    with pytest.raises(ScorerConfigError, match="no memory bank"):
        DFeatureScorer(g, d).infer(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ScorerConfigError, match="mapping.pooling='median'"):
        DFeatureScorer(g, d, pooling="median")
    with pytest.raises(ScorerConfigError, match="feature blocks"):
        DFeatureScorer(g, d, patch_layer=5)
    with pytest.raises(ScorerConfigError, match="model.self_supervised"):
        DFeatureScorer(g, d, score="transformations")


def test_a_bf16_run_predicts_its_own_scores_and_its_export_reports_the_float32_difference(
    tiny_cifar, tmp_path, monkeypatch, caplog
):
    """trainer.precision=auto on a CPU with native bf16 (said so here, whatever this CPU has) scores in
    bf16-mixed: scorer.pt keeps the resolved precision and correction, predict.py and the API score in it
    (scores.csv's values), and the float32 ONNX graph, checked against float32 PyTorch, reports and logs how
    far it is from the run's own scores."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from PIL import Image

    import anogan
    from anogan.cli.predict import predict
    from anogan.config.choices import RESOLVED_CORRECTIONS
    from anogan.deploy.export import export
    from anogan.engine import hardware
    from anogan.engine.artifact import read_artifact

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    overrides = [o for o in tiny_overrides(tiny_cifar, tmp_path, mapping="dcombined") if not o.startswith("trainer.precision=")]
    run_train([*overrides, "trainer.precision=auto", "mapping.correction=auto"])
    run = tmp_path / "run"
    payload = read_artifact(run)
    assert payload["precision"] == "bf16-mixed" and payload["calibration"]["correction"] in RESOLVED_CORRECTIONS
    with open(run / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    chosen = list(range(0, len(rows), 9))[:8]
    dm = instantiate(OmegaConf.load(run / "config_resolved.yaml").data)
    dm.setup()
    images = dm.eval_set.images[chosen]  # the run's evaluation images, as it scored them
    (tmp_path / "pngs").mkdir()
    for k, i in enumerate(chosen):
        Image.fromarray(images[k].permute(1, 2, 0).numpy()).save(tmp_path / "pngs" / f"row{i:03d}.png")
    result = predict(run, tmp_path / "pngs", out=tmp_path / "pred.csv")
    api = anogan.load(run, device="cpu").predict(images)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in result["rows"]}
    for k, i in enumerate(chosen):
        want = float(rows[i]["score"])
        assert by_name[f"row{i:03d}.png"]["score"] == pytest.approx(want, rel=1e-5)
        assert api[k]["score"] == pytest.approx(want, rel=1e-5)

    with caplog.at_level("WARNING", logger="anogan.deploy.export"):
        exported = export(run, out=tmp_path / "export", input=tmp_path / "pngs")
    assert exported["max_relative_difference"] <= 1e-4  # against float32 PyTorch
    note = json.loads(exported["json"].read_text())["checked"]["run_precision"]
    assert note["precision"] == "bf16-mixed" and note["max_relative_difference"] > 0
    assert any("scored in bf16-mixed and the ONNX graph computes in float32" in r.getMessage() for r in caplog.records)
