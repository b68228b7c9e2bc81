"""benchmarks/make_demo_data.py textures: the real-photograph sets (scikit-image's brick, grass, gravel)
and benchmarks/texture_recipes.py's choice rule and table."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import make_demo_data
import texture_recipes

# decoded pixels of every file of the brick set as first written (the docs' brick figures were measured on it)
BRICK_DIGEST = "c52c902887a79d45a13adbb60e795d3778e1c5c78872b868ea5363739ca3dc1a"


def pixel_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.png")):
        h.update(str(f.relative_to(root)).encode())
        h.update(np.asarray(Image.open(f)).tobytes())
    return h.hexdigest()


def test_default_textures_are_the_documented_brick_set(tmp_path):
    pytest.importorskip("skimage")
    make_demo_data.textures(tmp_path)
    assert pixel_digest(tmp_path / "brick") == BRICK_DIGEST


def test_textures_from_another_photograph_at_another_size(tmp_path):
    pytest.importorskip("skimage")
    from skimage import data

    make_demo_data.textures(tmp_path, photo="grass", size=32)
    root = tmp_path / "grass"
    counts = {d: len(list((root / "test" / d).glob("*.png"))) for d in ("good", "foreign", "scratch", "smudge")}
    assert counts == {"good": 40, "foreign": 30, "scratch": 30, "smudge": 30}
    train = sorted((root / "train" / "good").glob("*.png"))
    assert len(train) == 240
    first = np.asarray(Image.open(train[0]))
    assert first.shape == (32, 32)
    grass = data.grass()  # a training crop is a crop of the top three quarters of the photograph
    rows = np.lib.stride_tricks.sliding_window_view(grass[: 384 - 31], 32, axis=1)  # (y, x, 32): first rows
    ys, xs = np.nonzero((rows == first[0]).all(-1))
    assert any((grass[y : y + 32, x : x + 32] == first).all() for y, x in zip(ys, xs))
    for defect in ("foreign", "scratch", "smudge"):
        for img in sorted((root / "test" / defect).glob("*.png")):
            mask = np.asarray(Image.open(root / "ground_truth" / defect / f"{img.stem}_mask.png"))
            assert mask.shape == (32, 32) and set(np.unique(mask)) == {0, 255}
            if defect == "scratch":
                assert (np.asarray(Image.open(img))[mask > 0] == 240).all()


def test_textures_bad_input_exits_2_with_one_line(tmp_path):
    script = str(REPO / "benchmarks" / "make_demo_data.py")
    for args, message in (
        (["--photo", "grass", "--foreign", "grass"], "--foreign must be another photograph than --photo (grass)"),
        (["--size", "200"], "--size 200 must be 16 to 128"),
    ):
        r = subprocess.run([sys.executable, script, "textures", str(tmp_path), *args], capture_output=True, text=True)
        if "No module named 'skimage'" in r.stderr:
            pytest.skip("scikit-image is not installed")
        assert r.returncode == 2 and message in r.stderr
        assert "Traceback" not in r.stderr


def test_texture_recipes_chooses_by_mean_validation_auroc():
    run = {"test_auroc": 0.9, "test_pixel_auroc": 0.8, "test_aupro": 0.7, "val_complexity_only": 0.6}
    run |= {"test_complexity_only": 0.6, "gan_ok": False, "gan_flags": ["collapse"], "wall_s": 10.0}
    results = {
        "a": {"brick": {**run, "val_auroc": 0.9}, "grass": {**run, "val_auroc": 0.5}},  # mean 0.70
        "b": {"brick": {**run, "val_auroc": 0.8}, "grass": {**run, "val_auroc": 0.7}},  # mean 0.75: chosen
        "c": {"brick": {**run, "val_auroc": 1.0}},  # not finished on every set: not a candidate
    }
    choice = texture_recipes.choose(results, ["brick", "grass"])
    assert choice["chosen"] == "b"
    assert choice["mean_val_auroc"] == pytest.approx({"a": 0.70, "b": 0.75})
    table = texture_recipes.markdown(results, choice)
    assert (
        "| **b** | 0.750 |" in table
        and "| c | brick | 1.000 | 0.900 | 0.800 | 0.700 | 0.600 / 0.600 | no (collapse) | 10.0 |" in table
    )


def test_texture_recipes_train_each_gan_once_and_score_its_snapshots(tmp_path):
    preset = tmp_path / "grass" / "preset"
    (preset / "snaps").mkdir(parents=True)
    (preset / "snaps" / "epoch=14-step=105.ckpt").touch()
    done = {("ssd", 60): preset}
    assert texture_recipes.gan_source("preset", "grass", tmp_path, {}) == [
        "+callbacks.snaps._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        "+callbacks.snaps.dirpath=${paths.output_dir}/snaps",
        "+callbacks.snaps.save_top_k=-1",
        "+callbacks.snaps.every_n_epochs=15",
    ]
    assert texture_recipes.gan_source("epochs15_layer3", "grass", tmp_path, done) == [
        f"gan.checkpoint='{preset / 'snaps' / 'epoch=14-step=105.ckpt'}'"
    ]
    assert texture_recipes.gan_source("preset", "grass", tmp_path, done) == [f"gan.checkpoint={preset / 'gan'}"]
    assert texture_recipes.gan_source("epochs45_random", "grass", tmp_path, done)[0].startswith("+callbacks")  # no snapshot
    assert texture_recipes.gan_source("epochs15_plain_d_random", "grass", tmp_path, done)[0].startswith("+callbacks")  # other D
