"""predict.py: scoring new images with a finished run's scorer file (a tiny train.py run, made once)."""

import csv
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from anogan.cli.predict import parse_args, predict
from anogan.data.cifar10 import CIFAR10AnomalyDataModule
from anogan.data.images import to_model_input
from anogan.utils.errors import PredictError
from conftest import REPO, tiny_overrides
from conftest import train_in_process as run_train


@pytest.fixture(scope="module")
def tiny_run(tiny_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_run")
    run_train([*tiny_overrides(tiny_cifar, out), "mapping.correction=auto"])  # resolved on the run's validation split
    return out / "run"


@pytest.fixture(scope="module")
def tiny_encoder_run(tiny_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_encoder_run")
    # corrected for complexity: predict must apply the run's correction, as the run did
    run_train([*tiny_overrides(tiny_cifar, out, mapping="encoder"), "mapping.correction=complexity"])
    return out / "run"


def _save_png(image_chw_uint8: torch.Tensor, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_chw_uint8.permute(1, 2, 0).numpy()).save(path)


def _eval_images(run):
    """The run's evaluation images (uint8, as scored) and its scores.csv rows, in the same order."""
    cfg = OmegaConf.load(run / "config_resolved.yaml")
    dm = instantiate(cfg.data)
    dm.setup()
    with open(run / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(dm.eval_set)
    return dm.eval_set.images, rows


@pytest.mark.parametrize("scorer", ["latent", "encoder"])
def test_predict_reproduces_the_runs_test_scores(scorer, request, tmp_path):
    tiny_run = request.getfixturevalue("tiny_run" if scorer == "latent" else "tiny_encoder_run")
    images, rows = _eval_images(tiny_run)
    test_rows = [i for i, r in enumerate(rows) if r["split"] == "test"]
    chosen = [i for i in test_rows if rows[i]["label"] == "0"][:3] + [i for i in test_rows if rows[i]["label"] == "1"][:5]
    for i in chosen:  # at the original 32 px, as PNG (lossless)
        _save_png(images[i], tmp_path / "pngs" / f"row{i:03d}.png")
    result = predict(ckpt=tiny_run, input=tmp_path / "pngs", out=tmp_path / "pred.csv", batch_size=3)
    assert not result["skipped"] and len(result["rows"]) == len(chosen)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    rule = metrics["threshold"]["rule"]
    assert result["threshold"] == metrics["threshold"][rule]
    _check_rows(result["rows"], rows, chosen)
    with open(tmp_path / "pred.csv") as f:
        written = list(csv.DictReader(f))
    columns = ["path", "score", "p_value", "label", "raw_score", "residual", "discrimination", "complexity", "steps", "notes"]
    assert list(written[0]) == columns and len(written) == len(chosen)


def _check_rows(got_rows, rows, chosen):
    """predict's rows equal the run's scores.csv rows (score, p-value, label and every component)."""
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in got_rows}
    for i in chosen:
        got, want = by_name[f"row{i:03d}.png"], rows[i]
        for key in ("score", "raw_score", "residual", "discrimination", "complexity", "p_value"):
            assert abs(got[key] - float(want[key])) <= 1e-5 * abs(float(want[key])), (i, key, got[key], want[key])
        assert got["label"] == int(want["prediction"]) and got["steps"] == int(want["steps"])


def test_predict_needs_only_the_scorer_file(tiny_cifar, tmp_path):
    """A run whose GAN came from the cache: predict works after the cache (and gan/) are deleted, and
    from the scorer file copied anywhere; gan.checkpoint accepts the run folder."""
    import shutil

    out = tmp_path / "cached"
    cache = tmp_path / "cache"
    first = [*tiny_overrides(tiny_cifar, out), f"paths.gan_cache_dir={cache}", "gan.cache=true"]
    run_train(first)
    run_train([*first[:-2], f"paths.gan_cache_dir={cache}", "gan.cache=true", f"hydra.run.dir={out}/second"])
    run = out / "second"
    assert "cache" in json.loads((run / "metrics.json").read_text())["gan_source"]
    shutil.rmtree(cache)
    shutil.copy(run / "scorer.pt", tmp_path / "moved.pt")
    images, rows = _eval_images(run)
    chosen = list(range(0, len(rows), 9))[:6]
    for i in chosen:
        _save_png(images[i], tmp_path / "pngs" / f"row{i:03d}.png")
    result = predict(ckpt=tmp_path / "moved.pt", input=tmp_path / "pngs", out=tmp_path / "p.csv")
    _check_rows(result["rows"], rows, chosen)
    rescored = tmp_path / "rescored"
    run_train([*tiny_overrides(tiny_cifar, rescored), f"gan.checkpoint={run}"])
    assert json.loads((rescored / "run" / "metrics.json").read_text())["gan_source"].startswith("checkpoint")


def test_predict_skips_a_corrupt_file_and_names_it(tiny_run, tmp_path):
    images, _ = _eval_images(tiny_run)
    folder = tmp_path / "mixed"
    _save_png(images[0], folder / "a.png")
    _save_png(images[1], folder / "sub" / "b.png")  # found recursively
    big = torch.nn.functional.interpolate(images[2:3].float(), size=(48, 48), mode="nearest")[0].to(torch.uint8)
    Image.fromarray(big.permute(1, 2, 0).numpy()).save(folder / "c.jpg", quality=95)  # resized to 32 px
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(folder / "wide.png")  # not square: stretched (data.resize default)
    (folder / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "res" / "scores.csv"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "predict.py"),
            f"ckpt={tiny_run}",
            f"input={folder}",
            f"out={out}",
            "save_images=true",
            "threshold=0.5",
            "maps=true",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in rows) == ["a.png", "b.png", "c.jpg", "wide.png"]
    assert all(r["label"] == str(int(float(r["score"]) >= 0.5)) for r in rows)
    skipped = proc.stdout.split("skipped:", 1)[1]
    assert "broken.png" in skipped and "wide.png" not in skipped and "notes.txt: not an image" in skipped
    assert "a.png" not in skipped
    assert sorted(p.name for p in (tmp_path / "res" / "scores_images").iterdir()) == ["a.png", "c.png", "sub__b.png", "wide.png"]
    maps = tmp_path / "res" / "scores_maps"
    assert sorted(p.name for p in maps.iterdir()) == [
        "a.npy",
        "a_overlay.png",
        "c.npy",
        "c_overlay.png",
        "sub__b.npy",
        "sub__b_overlay.png",
        "wide.npy",
        "wide_overlay.png",
    ]
    assert np.load(maps / "c.npy").shape == (48, 48) and np.load(maps / "a.npy").dtype == np.float32  # at the image's own size


def test_resize_and_grey_match_the_cifar_data_module():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for size, channels in ((64, 3), (32, 1), (128, 1)):
        module = SimpleNamespace(hparams=SimpleNamespace(image_size=size, channels=channels))
        want = CIFAR10AnomalyDataModule._resize(module, data)
        got = torch.stack([to_model_input(d, size, channels) for d in data])
        assert torch.equal(got, want), (size, channels)


def test_bad_command_lines_say_what_is_wrong():
    with pytest.raises(PredictError, match="input=... is required"):
        parse_args(["ckpt=run"])
    with pytest.raises(PredictError, match="unknown argument"):
        parse_args(["ckpt=run", "input=x", "treshold=1"])
    args = parse_args(["ckpt=run", "input=x", "threshold=0.25", "save_images=true"])
    assert args["threshold"] == 0.25 and args["save_images"] is True
    assert parse_args(["ckpt=run", "input=x", "threshold=youden"])["threshold"] == "youden"
    with pytest.raises(PredictError, match="use fpr, f1, youden or a finite number"):
        parse_args(["ckpt=run", "input=x", "threshold=best"])
    assert parse_args(["ckpt=run", "input=x", "threshold=' FPR '"])["threshold"] == "fpr"
    for bad in ("nan", "inf", "-inf", "1e400"):
        with pytest.raises(PredictError) as refused:
            parse_args(["ckpt=run", "input=x", f"threshold={bad}"])
        assert str(refused.value).endswith(": use fpr, f1, youden or a finite number") and "\n" not in str(refused.value)
    with pytest.raises(PredictError, match=r"^threshold='nan': use fpr, f1, youden or a finite number$"):
        parse_args(["ckpt=run", "input=x", "threshold=nan"])


def test_predict_errors_are_one_line_with_exit_code_2(tiny_run, tmp_path):
    cases = [
        ([f"ckpt={tmp_path / 'nothing'}", f"input={tmp_path}"], "does not exist"),
        ([f"ckpt={tmp_path}", f"input={tmp_path}"], "holds no scorer.pt"),
        ([f"ckpt={tiny_run}", f"input={tmp_path / 'missing'}"], "input="),
    ]
    if not torch.cuda.is_available():
        cases.append(([f"ckpt={tiny_run}", f"input={tmp_path}", "device=cuda"], "device=cuda"))
    for argv, message in cases:
        proc = subprocess.run(
            [sys.executable, str(REPO / "predict.py"), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        errors = [line for line in proc.stderr.splitlines() if "[ERROR]" in line]
        assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], (argv, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


def test_onnx_export_of_an_encoder_run_reproduces_its_scores(tiny_encoder_run, tmp_path):
    import onnxruntime as ort

    from anogan.deploy.export import export

    images, rows = _eval_images(tiny_encoder_run)
    chosen = list(range(0, len(rows), 7))[:12]
    for i in chosen:
        _save_png(images[i], tmp_path / "pngs" / f"row{i:03d}.png")
    result = export(tiny_encoder_run, out=tmp_path / "export", input=tmp_path / "pngs")
    assert result["max_relative_difference"] <= 1e-4
    meta = json.loads(result["json"].read_text())
    assert meta["correction"] == "complexity" and meta["thresholds"]["fpr"] is not None
    session = ort.InferenceSession(str(result["onnx"]), providers=["CPUExecutionProvider"])
    x = images[chosen].float().div(127.5).sub(1.0).numpy()
    names = [o.name for o in session.get_outputs()]
    assert names == ["score", "raw_score", "anomaly_map", "p_value", "label"]
    score, raw, maps, p_value, label = session.run(None, {"image": x})
    assert maps.shape == (len(chosen), 32, 32)
    for k, i in enumerate(chosen):  # the run's own scores.csv rows (primary = corrected score)
        assert abs(score[k] - float(rows[i]["score"])) <= 1e-4 * abs(float(rows[i]["score"])), (i, score[k], rows[i]["score"])
        assert abs(raw[k] - float(rows[i]["raw_score"])) <= 1e-4 * abs(float(rows[i]["raw_score"]))
        if rows[i]["split"] == "test":  # a validation normal ties with its own score, which float rounding can tip
            assert abs(p_value[k] - float(rows[i]["p_value"])) < 1e-8 and label[k] == int(rows[i]["prediction"])
    # p-values from the exported normal scores, as the JSON documents, equal the run's
    normals = np.array(meta["normal_scores"])
    for i in chosen:
        p = (1 + (normals >= float(rows[i]["score"])).sum()) / (len(normals) + 1)
        assert abs(p - float(rows[i]["p_value"])) < 1e-8  # scores.csv holds 9 significant digits


def test_export_refuses_a_search_scorer_in_one_line(tiny_run, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "anogan.deploy.export", f"ckpt={tiny_run}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2 and "stays PyTorch-only" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_follows_a_run_folder_rerun_with_other_settings(tiny_cifar, tmp_path):
    """A folder rerun with overwrite=true and another search: predict gives the new scores.csv's scores."""
    out = tmp_path / "rerun"
    run_train(tiny_overrides(tiny_cifar, out))
    run_train([*tiny_overrides(tiny_cifar, out), "mapping.iterations=5", "overwrite=true"])
    run = out / "run"
    images, rows = _eval_images(run)
    assert {r["steps"] for r in rows} == {"5"}
    chosen = list(range(0, len(rows), 11))[:5]
    for i in chosen:
        _save_png(images[i], tmp_path / "pngs" / f"row{i:03d}.png")
    _check_rows(predict(ckpt=run, input=tmp_path / "pngs", out=tmp_path / "p.csv")["rows"], rows, chosen)
