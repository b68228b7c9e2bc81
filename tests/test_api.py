"""The Python API (anogan.load / Detector.predict / anogan.fit) on a tiny run trained in process."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import anogan
from anogan.cli.predict import parse_args
from anogan.data.reading import load_pixels, pixels_from_array
from anogan.deploy.detector import COLUMNS
from anogan.engine.result import RunResult
from anogan.utils.errors import ConfigError, ImageError, InputError, PredictError
from conftest import tiny_overrides


@pytest.fixture(scope="module")
def fitted(fitted_run):
    return fitted_run


@pytest.fixture(scope="module")
def evaluation(fitted):
    """The run's evaluation images (uint8 N×C×S×S, as scored) and its scores.csv rows, row-aligned."""
    cfg = OmegaConf.load(fitted.run_dir / "config_resolved.yaml")
    dm = instantiate(cfg.data)
    dm.setup()
    with open(fitted.run_dir / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(dm.eval_set)
    test = [i for i, r in enumerate(rows) if r["split"] == "test"]
    chosen = sorted([i for i in test if r_label(rows[i]) == 0][:3] + [i for i in test if r_label(rows[i]) == 1][:4])
    return dm.eval_set.images, rows, chosen


def r_label(row) -> int:
    return int(row["label"])


def _check(result, rows, chosen):
    """Every API row equals the run's scores.csv row (score, p-value, label and every component)."""
    assert len(result) == len(chosen)
    for got, i in zip(result.rows, chosen):
        want = rows[i]
        for key in ("score", "raw_score", "residual", "discrimination", "complexity", "p_value"):
            assert got[key] == pytest.approx(float(want[key]), rel=1e-5), (i, key)
        assert got["label"] == int(want["prediction"]) and got["steps"] == int(want["steps"])


def test_fit_returns_the_run_folder_and_its_metrics(fitted):
    from hydra.core.global_hydra import GlobalHydra

    assert fitted.run_dir.name == "run" and fitted.scorer_file.is_file()
    assert anogan.TrainResult is RunResult and isinstance(fitted, RunResult)  # one result type: the pipeline's
    assert fitted.scorer_file == fitted.run_dir / "scorer.pt" and fitted.metric == "val/auroc"
    assert fitted.metrics == json.loads((fitted.run_dir / "metrics.json").read_text())
    assert fitted.metrics["correction"] == "complexity"
    val_auroc = fitted.metrics["val"]["auroc"]
    assert val_auroc is not None and fitted.objective == pytest.approx(val_auroc)  # the tiny run has both classes in val
    assert not GlobalHydra.instance().is_initialized()  # Hydra's global state is left as found


def test_scores_equal_scores_csv_for_paths_arrays_and_tensors(fitted, evaluation, tmp_path):
    images, rows, chosen = evaluation
    detector = anogan.load(fitted.run_dir, batch_size=3)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in chosen:
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"row{i:03d}.png")
    paths = [folder / f"row{i:03d}.png" for i in chosen]
    by_folder = detector.predict(folder)
    assert [r["source"] for r in by_folder] == [str(p) for p in paths]
    _check(by_folder, rows, chosen)
    _check(detector.predict([str(p) for p in paths]), rows, chosen)
    arrays = [images[i].permute(1, 2, 0).numpy() for i in chosen]
    _check(detector.predict(arrays), rows, chosen)
    _check(detector.predict(arrays[0]), rows, chosen[:1])
    _check(detector.predict([Image.fromarray(a) for a in arrays]), rows, chosen)
    batch = images[chosen]
    by_tensor = detector.predict(batch)
    _check(by_tensor, rows, chosen)
    assert [r["source"] for r in by_tensor][:2] == ["input[0]", "input[1]"]
    by_float = detector.predict(batch.float() / 255)  # float in [0, 1]: the same uint8 values after rounding
    assert torch.equal(by_float.inputs, by_tensor.inputs)
    _check(by_float, rows, chosen)
    # the run's own threshold rule, as scores.csv's label column
    assert by_tensor.rule == fitted.metrics["threshold"]["rule"]
    assert by_tensor.threshold == fitted.metrics["threshold"][by_tensor.rule]
    # 2 validation normals: the fpr rule's threshold is infinite, and the calibration says why
    assert math.isinf(by_tensor.threshold) and by_tensor.rule == "fpr"
    assert by_tensor.warnings == detector.calibration.warnings and "target_fpr" in by_tensor.warnings[0]


def test_predictions_table_maps_rules_and_warnings(fitted, evaluation):
    images, rows, chosen = evaluation
    detector = anogan.load(fitted.run_dir / "scorer.pt")
    big = torch.nn.functional.interpolate(images[chosen[:2]].float(), size=(48, 40), mode="nearest").to(torch.uint8)
    result = detector.predict([big[0].permute(1, 2, 0).numpy(), big[1]], maps=True, reconstructions=True)
    assert [m.shape for m in result.maps] == [(48, 40), (48, 40)] and result.maps[0].dtype == np.float32
    assert result.reconstructions.shape == (2, 3, 32, 32) and result.reconstructions.abs().max() <= 1
    assert [r["source"] for r in result] == ["input[0]", "input[1]"]
    records = result.to_records()
    assert records == result.rows and records is not result.rows
    assert list(records[0]) == ["source", *COLUMNS]
    frame = result.to_pandas()
    assert frame["score"].tolist() == list(result.column("score")) and len(frame) == 2
    # another rule, or a number
    youden = detector.predict(big, threshold="youden")
    assert youden.threshold == fitted.metrics["threshold"]["youden"]
    cut = float(np.median(youden.column("score")))
    numbered = detector.predict(big, threshold=cut)
    assert numbered.threshold == cut and list(numbered.column("label")) == [int(s >= cut) for s in numbered.column("score")]
    resized = [f"input[{i}]: resized from 40×48 to 32×32 (stretched to a square, bilinear, antialiased)" for i in (0, 1)]
    assert numbered.warnings == resized and list(numbered.column("notes")) == [w.split(": ", 1)[1] for w in resized]
    assert detector.predict(big, threshold=" FPR ").threshold == detector.predict(big, threshold="fpr").threshold
    for bad in ("nan", float("nan"), float("inf"), "-inf", True):
        with pytest.raises(InputError, match=r"^threshold=.*: use fpr, f1, youden or a finite number$"):
            detector.predict(big, threshold=bad)
    with pytest.raises(InputError, match=r"^threshold='nan': use fpr, f1, youden or a finite number$"):
        detector.predict(big, threshold="nan")


def test_in_memory_images_follow_the_file_rules(tmp_path):
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit grey PNG (I;16)
    assert np.array_equal(pixels_from_array(deep), load_pixels(tmp_path / "deep.png"))
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(pixels_from_array(rgba), load_pixels(tmp_path / "rgba.png"))
    assert pixels_from_array(np.array([[0.0, 0.5, 1.0]])).ravel().tolist() == [0, 128, 255]
    assert pixels_from_array(np.zeros((4, 3), np.uint8)).shape == (4, 3, 1)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((8, 8), np.int32), "dtype int32"),
        (np.full((8, 8, 3), 2.0, np.float32), "float pixels outside [0, 1] (they span [2, 2]): divide 8-bit values by 255"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.zeros((2, 8, 8, 3), np.uint8), "is not an image"),
        (np.zeros((0, 8), np.uint8), "0 pixels"),
        (torch.zeros(2, 5, 8, 8), "a tensor of shape (2, 5, 8, 8) is not an image: tensors are C×H×W or N×C×H×W"),
        ({"image": 1}, "a dict is not an image"),
        ("/nonexistent/x.png", "does not exist"),
    ],
)
def test_bad_inputs_raise_one_line_typed_errors(fitted, bad, message):
    detector = anogan.load(fitted.run_dir)
    with pytest.raises(InputError, match=None) as err:
        detector.predict(bad)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, anogan.utils.errors.UserError)


def test_unreadable_files_raise_or_are_skipped(fitted, evaluation, tmp_path):
    images, _, _ = evaluation
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    detector = anogan.load(fitted.run_dir)
    with pytest.raises(InputError, match="broken.png: not an image"):
        detector.predict(tmp_path)
    result = detector.predict(tmp_path, errors="skip")
    assert [r["source"] for r in result] == [str(tmp_path / "good.png")]
    assert result.skipped == [(str(tmp_path / "broken.png"), "not an image (Pillow cannot identify the file)")]
    for kwargs, message in (({"threshold": "best"}, "threshold='best'"), ({"errors": "ignore"}, "errors='ignore'")):
        with pytest.raises(InputError, match=message):
            detector.predict(tmp_path / "good.png", **kwargs)
    with pytest.raises(InputError, match="device='tpu'"):
        anogan.load(fitted.run_dir, device="tpu")
    # the same rule and words as the command lines' (anogan.config.arguments)
    for key, bad in (("device", "tpu"), ("batch_size", 0), ("batch_size", -2)):
        with pytest.raises(PredictError) as by_command_line:
            parse_args(["ckpt=run", "input=x", f"{key}={bad}".lower()])
        with pytest.raises(InputError) as by_api:
            anogan.load(fitted.run_dir, **{key: bad})
        assert str(by_api.value) == str(by_command_line.value), key
    with pytest.raises(ImageError):  # the reader's own error, wrapped by the API above
        pixels_from_array(np.zeros((3, 3), np.int64))


def test_fit_refuses_bad_overrides_in_one_line(tiny_cifar, tmp_path):
    with pytest.raises(ConfigError, match="no_such_key") as err:
        anogan.fit([*tiny_overrides(tiny_cifar), "model.no_such_key=1"], run_dir=tmp_path / "run")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="mapping"):
        anogan.fit(["mapping=no_such_scorer"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_maps_land_on_the_images_own_pixels(fitted, resize):
    """A map with one hot model pixel lands where that pixel's content came from, per resize policy."""
    detector = anogan.load(fitted.run_dir)
    detector.resize = resize
    amap = torch.zeros(32, 32)
    amap[:, :16] = 1.0  # the left half of what the model saw
    full = detector.map_at_size(amap, (20, 40))  # a wide image, H 20 × W 40
    assert full.shape == (20, 40) and full.dtype == np.float32
    hot = full > 0.5
    top = torch.zeros(32, 32)
    top[:8] = 1.0  # the top quarter of what the model saw
    top_hot = detector.map_at_size(top, (20, 40)) > 0.5
    if resize == "stretch":  # the model saw the whole image
        assert hot[:, :19].all() and not hot[:, 21:].any()
        assert top_hot[:4].all() and not top_hot[6:].any()
    elif resize == "crop":  # the model saw the centred 20×20 square (columns 10..29)
        assert hot[:, 10:19].all() and not hot[:, :10].any() and not hot[:, 21:].any()
        assert top_hot[:4, 10:30].all() and not top_hot[:, :10].any() and not top_hot[6:].any()
    else:  # pad: the model saw a 40×40 square holding the image in rows 10..29; its top quarter is border
        assert hot[:, :19].all() and not hot[:, 21:].any()
        assert not top_hot.any()
