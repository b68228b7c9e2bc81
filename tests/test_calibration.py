"""The one calibration module: what it fits on validation, that it round-trips through the scorer
file, that the exported graph is the scorer plus this module, the unreachable-target warning, and
the pipeline order (scorer.pt before metrics.json)."""

import json
import logging
import math

import numpy as np
import pytest
import torch

from anogan.metrics.image import fit_thresholds
from anogan.metrics.stats import conformal_p_values
from anogan.post_processing.calibration import Calibration, complexity_of_model_input, primary_score
from anogan.post_processing.scores import complexity
from anogan.utils.errors import CalibrationError, ThresholdRuleError
from conftest import tiny_overrides
from conftest import train_in_process as run_train


def _validation(n_normal=40, n_anomalous=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.zeros(n_normal), torch.ones(n_anomalous)]).long()
    residual = torch.rand(len(labels), generator=g) * 10 + 1 + 5 * labels
    discrimination = torch.rand(len(labels), generator=g) * 100 + 1 + 30 * labels
    c = torch.rand(len(labels), generator=g) + 0.1
    components = {"score": 0.9 * residual + 0.1 * discrimination, "residual": residual, "discrimination": discrimination}
    return components, c, labels


def test_fit_equals_the_metrics_functions_on_validation():
    components, c, labels = _validation()
    cal = Calibration.fit(components, c, labels, correction="complexity", rule="youden", target_fpr=0.1)
    score = primary_score(components["score"], c, "complexity")
    want = fit_thresholds(score, labels, 0.1)
    assert cal.thresholds == want and float(cal.threshold) == want["youden"]
    assert torch.equal(cal.normal_scores, torch.sort(score[labels == 0]).values)
    post = cal(components, c)
    assert torch.equal(post["score"], score) and torch.equal(post["raw_score"], components["score"].double())
    assert torch.equal(post["p_value"], conformal_p_values(score[labels == 0], score))
    assert torch.equal(post["label"], (score >= want["youden"]).long())
    assert float(cal(components, c, rule="fpr")["threshold"]) == want["fpr"]
    assert float(cal(components, c, rule=2.5)["threshold"]) == 2.5


def test_auto_resolves_on_validation_and_errors_are_typed():
    components, c, labels = _validation()
    busy_normals = torch.where(labels == 0, 5.0, 0.2)  # anomalies plain: the correction separates perfectly
    raw = torch.where(labels == 0, 2.0, 1.0) + torch.linspace(0, 0.1, len(labels))
    assert Calibration.fit(raw, busy_normals, labels, correction="auto").correction == "complexity"
    assert Calibration.fit(components, c, labels, correction="auto").correction in ("none", "complexity")
    with pytest.raises(CalibrationError, match="no normal image"):
        Calibration.fit(components, c, torch.ones_like(labels))
    normals_only = Calibration.fit(components["score"][:30], c[:30], labels[:30])
    with pytest.raises(ThresholdRuleError, match="needs anomalous validation images"):
        normals_only(components["score"], c, rule="f1")
    with pytest.raises(ValueError, match="does not output"):
        Calibration.fit(components, c, labels, combine=["residual", "ssim"])


def test_combination_is_the_sum_of_log_z_scores_of_validation_normals():
    labels = torch.tensor([0, 0, 0, 1])
    e = math.e
    components = {
        "score": torch.zeros(4),
        "a": torch.tensor([1.0, e, e * e, e**5]),  # positive: log -> 0, 1, 2 on the normals
        "b": torch.tensor([-1.0, 0.0, 1.0, 7.0]),  # not positive: left as it is
    }
    cal = Calibration.fit(components, torch.ones(4), labels, combine=["a", "b"])
    assert cal.combine_log.tolist() == [True, False]
    sd = math.sqrt(2 / 3)  # population standard deviation of (0, 1, 2) and of (-1, 0, 1)
    assert torch.allclose(cal.combine_mean, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(cal.combine_std, torch.tensor([sd, sd], dtype=torch.float64))
    raw = cal(components, torch.ones(4))["raw_score"]
    want = torch.tensor([(0 - 1) / sd + -1 / sd, 0.0, (2 - 1) / sd + 1 / sd, (5 - 1) / sd + 7 / sd], dtype=torch.float64)
    assert torch.allclose(raw, want, atol=1e-6)
    again = Calibration.from_state(cal.state())
    assert again.combine == ["a", "b"] and torch.equal(again(components, torch.ones(4))["raw_score"], raw)


def test_times_complexity_is_raw_times_complexity_and_auto_picks_it_when_anomalies_are_busier():
    components, c, labels = _validation()
    cal = Calibration.fit(components, c, labels, correction="times_complexity")
    assert torch.equal(cal(components, c)["score"], components["score"].double() * c.double())
    busy_anomalies = torch.where(labels == 0, 0.2, 5.0)  # same raw scores, anomalies busier: only S * C separates
    raw = torch.where(labels == 0, 2.0, 1.0) + torch.linspace(0, 0.1, len(labels))
    assert Calibration.fit(raw, busy_anomalies, labels, correction="auto").correction == "times_complexity"


@pytest.mark.parametrize(("correction", "sign"), [("complexity", -1.0), ("times_complexity", 1.0), ("none", 0.0)])
def test_a_combined_score_is_corrected_by_the_z_scored_log_complexity_of_validation_normals(correction, sign):
    labels = torch.tensor([0, 0, 0, 1])
    components = {"score": torch.zeros(4), "a": torch.tensor([1.0, 2.0, 3.0, 9.0])}
    c = torch.tensor([1.0, math.e, math.e**2, math.e**4])  # log: 0, 1, 2 on the normals; 4 on the anomaly
    cal = Calibration.fit(components, c, labels, correction=correction, combine=["a"])
    post = cal(components, c)
    z = (torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64) - 1.0) / math.sqrt(2 / 3)
    assert torch.allclose(post["score"], post["raw_score"] + sign * z)
    again = Calibration.from_state(cal.state())
    assert torch.equal(again(components, c)["score"], post["score"])


def test_a_combined_calibration_from_an_older_scorer_file_divides_by_complexity_as_it_did():
    components, c, labels = _validation()
    cal = Calibration.fit(components, c, labels, correction="complexity", combine=["residual", "discrimination"])
    state = cal.state()
    del state["combine"]["complexity_stats"]  # written before the statistics existed
    old = Calibration.from_state(state)
    raw = old(components, c)["raw_score"]
    assert old.log_stats is None and torch.equal(old(components, c)["score"], raw / c.double())


def test_state_round_trip_gives_identical_outputs_and_buffers_travel():
    components, c, labels = _validation()
    cal = Calibration.fit(components, c, labels, correction="complexity", rule="f1", target_fpr=0.05)
    again = Calibration.from_state(cal.state())
    a, b = cal(components, c), again(components, c)
    assert all(torch.equal(a[k], b[k]) for k in a) and again.thresholds == cal.thresholds
    assert {"normal_scores", "rule_thresholds", "threshold"} <= set(dict(cal.named_buffers()))


def test_a_log_scaled_component_that_barely_varies_is_divided_by_the_floor_not_by_its_spread():
    """A component near 308 that varies by 1e-5 relative over the normals (an untrained 72-way head):
    its z-score divides by LOG_STD_FLOOR, so a float32 rounding of the component (3e-5, 1e-7 in log) moves
    the combined score by 1e-5, not by 0.1 (its own spread, 1e-6 in log)."""
    from anogan.post_processing.calibration import LOG_STD_FLOOR

    components, c, labels = _validation()
    flat = 308.0 + 1e-3 * torch.rand(len(labels), generator=torch.Generator().manual_seed(1))
    components = {**components, "flat": flat.double()}
    cal = Calibration.fit(components, c, labels, combine=["flat", "residual"])
    assert cal.combine_std[0] == LOG_STD_FLOOR and cal.combine_std[1] > LOG_STD_FLOOR
    nudged = {**components, "flat": components["flat"] + 3e-5}
    assert (cal(nudged, c)["raw_score"] - cal(components, c)["raw_score"]).abs().max() < 1e-5


def test_complexity_of_model_input_equals_that_of_the_uint8_images():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8))
    x = images.float().div(127.5).sub(1.0)  # what the scorer sees
    assert torch.allclose(complexity_of_model_input(x), complexity(images), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n_normal,warned", [(14, True), (18, True), (19, False)])
def test_unreachable_target_says_so_with_the_fix(n_normal, warned):
    components, c, labels = _validation(n_normal, 5)
    cal = Calibration.fit(components, c, labels, target_fpr=0.05)
    assert cal.target_unreachable is warned and math.isinf(cal.thresholds["fpr"]) is warned
    assert len(cal.warnings) == int(warned)
    if warned:
        assert f"{n_normal} validation normals" in cal.warnings[0] and "at least 19" in cal.warnings[0]
        assert all(k in cal.warnings[0] for k in ("data.val_fraction", "threshold.target_fpr", "more normal images"))
        assert cal(components, c)["label"].sum() == 0


def test_export_graph_is_the_scorer_plus_the_calibration_with_feature_maps(tmp_path):
    """map_features=true: the exported maps hold the feature term (today's copy dropped it), and
    ONNX Runtime reproduces run_scorer + the calibration (the check inside ``export``)."""
    pytest.importorskip("onnxruntime")
    from anogan.deploy.export import export, reference_outputs
    from anogan.engine.artifact import save_artifact
    from anogan.scorers import EncoderScorer
    from conftest import small_nets

    g, d = small_nets()
    scorer = EncoderScorer(g, d, width=8, map_features=True, correction="complexity")
    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8))
    labels = torch.tensor([0] * 9 + [1] * 3)
    want = reference_outputs(scorer, Calibration("none", "fpr", 0.05, {"fpr": math.inf}, torch.zeros(0)), images)
    cal = Calibration.fit(torch.from_numpy(want["raw_score"]), complexity(images), labels, "complexity", "fpr", 0.2)
    arch = {"latent_dim": 16, "channels": 3, "image_size": 32, "g_width": 8, "d_width": 8}
    path = save_artifact(
        tmp_path / "scorer.pt", scorer, arch, cal, {"image_size": 32, "channels": 3, "resize": "stretch"}, "32-true", {}
    )
    (tmp_path / "pngs").mkdir()
    from PIL import Image

    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "pngs" / f"{i:02d}.png")
    result = export(path, out=tmp_path / "export", input=tmp_path / "pngs")
    assert result["max_relative_difference"] <= 1e-4 and result["images"] == 12
    import onnxruntime as ort

    session = ort.InferenceSession(str(result["onnx"]), providers=["CPUExecutionProvider"])
    got = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {"image": images.float().div(127.5).sub(1).numpy()}))
    )
    without_features = reference_outputs(EncoderScorer(g, d, width=8, map_features=False), cal, images)["anomaly_map"]
    assert np.abs(got["anomaly_map"] - want["anomaly_map"]).max() <= 1e-4 * np.abs(want["anomaly_map"]).max()
    assert np.abs(got["anomaly_map"] - without_features).max() > 1e-2  # the feature term is there
    post = cal(torch.from_numpy(want["raw_score"]), complexity(images))
    assert np.allclose(got["score"], post["score"].numpy(), rtol=1e-5)
    meta = json.loads(result["json"].read_text())
    assert meta["checked"]["against"].startswith("anogan.engine.inference.run_scorer") and meta["correction"] == "complexity"


def test_a_failure_writing_the_scorer_leaves_no_finished_marker(tiny_cifar, tmp_path, monkeypatch):
    """scorer.pt is written before metrics.json (the run-folder guard's "finished" marker)."""
    import anogan.engine.stages
    from anogan.utils.errors import ArtifactError

    def fail(*args, **kwargs):
        raise ArtifactError("disk full (simulated)")

    monkeypatch.setattr(anogan.engine.stages, "save_artifact", fail)
    out = tmp_path / "killed"
    with pytest.raises(ArtifactError, match="simulated"):
        run_train(tiny_overrides(tiny_cifar, out))
    run = out / "run"
    assert not (run / "metrics.json").exists() and not (run / "scorer.pt").exists()
    assert not (run / "scores.csv").exists()  # the report comes after the scorer file too


def test_unreachable_target_warns_in_the_log_metrics_and_predict(tiny_cifar, tmp_path, caplog):
    from anogan.cli.predict import predict

    out = tmp_path / "strict"
    with caplog.at_level(logging.WARNING, logger="anogan"):
        run_train([*tiny_overrides(tiny_cifar, out), "threshold.target_fpr=0.001"])
    assert any("threshold.target_fpr=0.001 is unreachable" in r.getMessage() for r in caplog.records)
    run = out / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "data.val_fraction" in metrics["warnings"][0]
    # the weak-detector line (anogan.reporting.run_checks) is there exactly when validation says the run failed
    versus = metrics["versus_complexity_baseline"]["val"]
    failed = metrics["val"]["auroc"] < max(0.5, versus["auroc_complexity_only"])
    weak = [w for w in metrics["warnings"] if w.startswith("validation AUROC ")]
    assert len(metrics["warnings"]) == 1 + failed and len(weak) == failed
    assert all(any(w == r.getMessage() for r in caplog.records) for w in weak)  # logged too
    calibration_warnings = metrics["warnings"][:1]
    assert metrics["threshold"]["value"] == math.inf
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "in" / "grey.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="anogan.cli.predict"):
        result = predict(ckpt=run, input=tmp_path / "in", out=tmp_path / "p.csv")
    assert result["threshold"] == math.inf and result["warnings"] == calibration_warnings
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    assert predict(ckpt=run, input=tmp_path / "in", out=tmp_path / "q.csv", threshold=1.0)["warnings"] == []


def test_a_flat_image_scores_the_same_with_onnx_and_pytorch_under_the_floor(tmp_path):
    """An all-black and an all-grey image (complexity 0): the corrected score is 255 × the raw
    score (``COMPLEXITY_FLOOR``), the same from the exported graph, the Python API and the calibration."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    import anogan
    from anogan.deploy.export import export, reference_outputs
    from anogan.engine.artifact import save_artifact
    from anogan.post_processing.scores import COMPLEXITY_FLOOR
    from anogan.scorers import EncoderScorer
    from conftest import small_nets

    g, d = small_nets()
    scorer = EncoderScorer(g, d, width=8, correction="complexity")
    images = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8))
    raw = reference_outputs(scorer, Calibration("none", "fpr", 0.05, {"fpr": math.inf}, torch.zeros(0)), images)["raw_score"]
    cal = Calibration.fit(torch.from_numpy(raw), complexity(images), torch.tensor([0] * 9 + [1] * 3), "complexity", "fpr", 0.2)
    arch = {"latent_dim": 16, "channels": 3, "image_size": 32, "g_width": 8, "d_width": 8}
    path = save_artifact(
        tmp_path / "scorer.pt", scorer, arch, cal, {"image_size": 32, "channels": 3, "resize": "stretch"}, "32-true", {}
    )
    result = export(path, out=tmp_path / "export")
    flat = torch.stack([torch.zeros(3, 32, 32, dtype=torch.uint8), torch.full((3, 32, 32), 128, dtype=torch.uint8)])
    session = ort.InferenceSession(str(result["onnx"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"image": flat.float().div(127.5).sub(1).numpy()})))
    want = reference_outputs(scorer, cal, flat)
    assert COMPLEXITY_FLOOR == 1 / 255
    assert np.allclose(want["score"], 255 * want["raw_score"], rtol=1e-12)
    assert np.allclose(got["score"], want["score"], rtol=1e-5) and np.array_equal(got["label"], want["label"])
    api = anogan.load(path, device="cpu").predict([f.permute(1, 2, 0).numpy() for f in flat])
    assert np.allclose(api.column("score"), want["score"], rtol=1e-9)
