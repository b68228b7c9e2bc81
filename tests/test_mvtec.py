"""data=mvtec: a tiny MVTec AD category whose defects and masks the tests know."""

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from anogan.data.mvtec import MVTecDataModule
from anogan.utils.errors import DataError
from conftest import compose_config

SIZE = 16  # image files are 16x16; masks are written at 32x32 (2x) to test nearest resizing
BOX = {"crack": (4, 8, 6, 10), "scratch": (9, 13, 2, 5)}  # y0, y1, x0, x1 in image pixels


def _grey(path, value, box=None, size=SIZE, noise=False):
    pixels = np.full((size, size), value, dtype=np.uint8)
    if noise:  # textured, so that a synthetic anomaly changes pixels wherever it is put
        pixels = np.random.default_rng(value).integers(60, 190, (size, size)).astype(np.uint8)
    if box:
        y0, y1, x0, x1 = box
        pixels[y0:y1, x0:x1] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)  # grey PNG, like MVTec's grid / screw / zipper


def write_tiny_mvtec(root, category="widget", n_train=10, n_good=4, n_defect=4):
    """<root>/<category>/{train/good, test/good, test/crack, test/scratch, ground_truth/...}; each
    defect image has a bright square at BOX[defect] and a 0/255 mask of it at twice the size."""
    folder = root / category
    for i in range(n_train):
        _grey(folder / "train" / "good" / f"{i:03d}.png", 100 + i, noise=True)
    for i in range(n_good):
        _grey(folder / "test" / "good" / f"{i:03d}.png", 100 + i)
    for defect, (y0, y1, x0, x1) in BOX.items():
        for i in range(n_defect):
            _grey(folder / "test" / defect / f"{i:03d}.png", 100 + i, BOX[defect])
            mask = np.zeros((2 * SIZE, 2 * SIZE), dtype=np.uint8)
            mask[2 * y0 : 2 * y1, 2 * x0 : 2 * x1] = 255
            (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


@pytest.fixture
def mvtec_root(tmp_path):
    return write_tiny_mvtec(tmp_path / "mvtec")


def _expected_mask(name, image_size):
    """The defect square at the model size (an exact 2x / 4x upsampling of the 16 px grid)."""
    mask = torch.zeros(1, image_size, image_size, dtype=torch.uint8)
    if name in BOX:
        k = image_size // SIZE
        y0, y1, x0, x1 = BOX[name]
        mask[:, k * y0 : k * y1, k * x0 : k * x1] = 1
    return mask


def test_mvtec_splits_masks_and_defect_names(mvtec_root, tmp_path):
    cfg = compose_config(["data=mvtec", f"data.root={mvtec_root}", "data.category=widget", "data.image_size=32"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    m, s = dm.manifest, dm.manifest["splits"]
    assert s["train"]["size"] == 10 and s["train"]["anomalous"] == 0
    assert {k: (s["val"]["class_counts"][k], s["test"]["class_counts"][k]) for k in ("good", "crack", "scratch")} == {
        "good": (2, 2),
        "crack": (2, 2),
        "scratch": (2, 2),  # stratified halves of test/
    }
    assert set(s["train"]["ids"]).isdisjoint(s["val"]["ids"] + s["test"]["ids"]) and set(s["val"]["ids"]).isdisjoint(
        s["test"]["ids"]
    )
    assert tuple(dm.eval_set.images.shape[1:]) == (3, 32, 32)  # grey files read as the configured 3 channels
    assert dm.train_set.masks is None and dm.eval_set.masks.dtype == torch.uint8
    assert tuple(dm.eval_set.masks.shape) == (len(dm.eval_set), 1, 32, 32)

    columns = dm.eval_columns()
    files = columns["source"]
    assert all(f.split("/")[1] == name for f, name in zip(files, columns["class_name"]))
    for row, name in enumerate(columns["class_name"]):
        assert torch.equal(dm.eval_set.masks[row], _expected_mask(name, 32)), (row, name)
        assert dm.eval_set.labels[row] == (name != "good")
    bright = dm.eval_set.images[:, 0] > 175  # halfway between 100 and 250 after bilinear upsampling
    assert torch.equal(bright, dm.eval_set.masks[:, 0].bool())  # the mask sits on the defect's pixels
    assert m["masks"]["val"] == {"with_mask": 6, "nonempty": 4, "anomalous_with_empty_mask": 0}
    assert m["synthetic"] is None and s["test"]["synthetic"] == 0
    assert set(dm.eval_set[0]) == {"image", "label", "id", "row", "key"}  # masks stay out of the batch
    assert json.loads(dm.write_manifest(tmp_path).read_text())["category"] == "widget"


def test_mvtec_masks_follow_the_model_size(mvtec_root):
    dm = MVTecDataModule(root=str(mvtec_root), category="widget", image_size=64, channels=1, split_seed=3)
    dm.setup()
    assert tuple(dm.eval_set.images.shape[1:]) == (1, 64, 64)
    for row, name in enumerate(dm.eval_columns()["class_name"]):
        assert torch.equal(dm.eval_set.masks[row], _expected_mask(name, 64))


def test_mvtec_missing_mask_and_category_are_one_line_errors(mvtec_root):
    (mvtec_root / "widget" / "ground_truth" / "scratch" / "002_mask.png").unlink()
    with pytest.raises(DataError, match=r"002\.png has no mask: .*002_mask\.png is missing") as err:
        MVTecDataModule(root=str(mvtec_root), category="widget", image_size=32).setup()
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="found: widget") as err:
        MVTecDataModule(root=str(mvtec_root), category="bottle").prepare_data()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["cutpaste", "blend"])
def test_mvtec_synthetic_validation_never_reaches_test(mvtec_root, method):
    def make(seed=0):
        dm = MVTecDataModule(
            root=str(mvtec_root),
            category="widget",
            image_size=32,
            synthetic_val_anomalies=method,
            synthetic_val_fraction=0.3,
            split_seed=seed,
        )
        dm.setup()
        return dm

    dm = make()
    s, m = dm.manifest["splits"], dm.manifest
    assert s["train"]["size"] == 7 and s["val"]["size"] == 6 and s["val"]["synthetic"] == 3
    assert s["test"]["size"] == 12 and s["test"]["synthetic"] == 0  # the whole test/ folder
    names = dm.eval_columns()["class_name"]
    val, test = dm.eval_split == "val", dm.eval_split == "test"
    assert sorted(names[val]) == ["good"] * 3 + [f"synthetic_{method}"] * 3
    assert f"synthetic_{method}" not in set(names[test])
    rows = m["synthetic"]["rows"]
    assert [r["synthetic"] for r in rows] == [True] * 3 and all(r["source"].startswith("train/good/") for r in rows)
    assert {r["id"] for r in rows} == set(dm.eval_set.ids[torch.from_numpy(names == f"synthetic_{method}")].tolist())
    # every synthetic anomaly changed only pixels inside its mask, and its mask is not empty
    files = m["files"]
    for row in np.flatnonzero(names == f"synthetic_{method}"):
        source = next(r["source"] for r in rows if r["id"] == dm.eval_set.ids[row])
        normal = dm.eval_set.images[dm.eval_set.ids == files.index(source)]
        assert len(normal) == 1  # the held-out normal it was made from is itself a validation row
        changed = (dm.eval_set.images[row] != normal[0]).any(0)
        mask = dm.eval_set.masks[row, 0].bool()
        assert mask.any() and changed.any() and not (changed & ~mask).any()
    again = make()
    assert torch.equal(again.eval_set.images, dm.eval_set.images) and torch.equal(again.eval_set.masks, dm.eval_set.masks)
    assert not torch.equal(make(seed=1).eval_set.masks[torch.from_numpy(val)], dm.eval_set.masks[torch.from_numpy(val)])


def test_train_py_runs_on_mvtec(mvtec_root, tmp_path):
    import csv

    from conftest import run_train

    overrides = [
        "data=mvtec",
        f"data.root={mvtec_root}",
        "data.category=widget",
        "data.image_size=32",
        "data.batch_size=5",
        "model.latent_dim=8",
        "model.g_width=8",
        "model.d_width=8",
        "trainer.max_epochs=1",
        "mapping.iterations=2",
        f"paths.log_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}/run",
    ]
    run_train(overrides)
    with open(tmp_path / "run" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["class_name"] for r in rows} == {"good", "crack", "scratch"}
    assert all(r["source"].startswith("test/") for r in rows)
    manifest = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert manifest["masks"]["test"]["with_mask"] == len(rows) - manifest["splits"]["val"]["size"]
    failed = run_train([*overrides[:2], "data.category=nope", *overrides[3:-1], f"hydra.run.dir={tmp_path}/failed"], check=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "nope/train/good is not a folder" in failed.stdout + failed.stderr and "found: widget" in failed.stdout + failed.stderr


@pytest.mark.parametrize("shape", [(37, 37, 16, 16), (13, 13, 32, 32), (50, 40, 64, 64), (900, 900, 64, 64)])
def test_resize_mask_is_pils_nearest(shape):
    from anogan.data.images import resize_mask

    h, w, height, width = shape
    mask = (np.random.default_rng(h).random((h, w)) > 0.5).astype(np.uint8)
    reference = np.asarray(Image.fromarray(mask * 255).resize((width, height), Image.NEAREST)) > 0
    resized = resize_mask(torch.from_numpy(mask)[None], height, width)
    assert resized.dtype == torch.uint8 and np.array_equal(resized[0].numpy(), reference.astype(np.uint8))


def test_folder_module_reads_a_mask_folder(mvtec_root):
    from anogan.data.folder import FolderAnomalyDataModule

    def make(mask_dir):
        return FolderAnomalyDataModule(
            root=str(mvtec_root / "widget"),
            normal_dir="train/good",
            normal_test_dir="test/good",
            image_size=32,
            abnormal_dir=["test/crack", "test/scratch"],
            mask_dir=mask_dir,
        )

    dm = make(["ground_truth/crack", "ground_truth/scratch"])
    dm.prepare_data()
    dm.setup()
    names = {"normal": "good", "test/crack": "crack", "test/scratch": "scratch"}
    for row, name in enumerate(dm.eval_columns()["class_name"]):
        assert torch.equal(dm.eval_set.masks[row], _expected_mask(names[name], 32)), (row, name)
    assert dm.manifest["masks"]["val"]["with_mask"] + dm.manifest["masks"]["test"]["with_mask"] == 12
    without = make(None)
    without.setup()
    assert without.eval_set.masks is None and without.manifest["masks"] is None
    with pytest.raises(DataError, match=r"crack/000\.png has no mask"):
        make("ground_truth").setup()  # one folder for both: masks are looked up as ground_truth/000_mask.png
    with pytest.raises(DataError, match="one mask folder per abnormal folder"):
        make(["ground_truth/crack"])


def test_config_check_accepts_mvtec_and_names_its_fractions(mvtec_root):
    from anogan.config.checks import check_config
    from anogan.utils.errors import ConfigError

    base = ["data=mvtec", f"data.root={mvtec_root}", "data.category=widget", "data.image_size=32"]
    check_config(compose_config(base))
    with pytest.raises(ConfigError, match="data.synthetic_val_fraction=1.5"):
        check_config(compose_config([*base, "data.synthetic_val_fraction=1.5"]))
    with pytest.raises(ConfigError, match="data.synthetic_val_anomalies='perlin' is not allowed: use null, cutpaste or blend"):
        check_config(compose_config([*base, "data.synthetic_val_anomalies=perlin"]))


def test_a_defect_too_small_for_its_mask_is_counted(mvtec_root, caplog):
    folder = mvtec_root / "widget"
    for i in range(2):  # a mask 4x larger than its image, marking one of its pixels not sampled by nearest
        _grey(folder / "test" / "dot" / f"{i:03d}.png", 120 + i)  # two pictures (copies would be one: duplicates)
        mask = np.zeros((4 * SIZE, 4 * SIZE), dtype=np.uint8)
        mask[0, 0] = 255
        (folder / "ground_truth" / "dot").mkdir(exist_ok=True)
        Image.fromarray(mask).save(folder / "ground_truth" / "dot" / f"{i:03d}_mask.png")
    dm = MVTecDataModule(root=str(mvtec_root), category="widget", image_size=32)
    dm.setup()
    counts = dm.manifest["masks"]
    assert counts["val"]["anomalous_with_empty_mask"] == counts["test"]["anomalous_with_empty_mask"] == 1
    assert "2 defect images have an empty mask" in caplog.text


def test_small_textures_preset_scores_patches_of_a_self_supervised_d(mvtec_root, tmp_path):
    """experiment=small_textures end to end: rotation head in D, dpatches as the score, pixel metrics."""
    import csv

    from conftest import train_in_process

    run = tmp_path / "run"
    train_in_process(
        [
            "experiment=small_textures",
            "data=mvtec",
            f"data.root={mvtec_root}",
            "data.category=widget",
            "data.batch_size=5",
            "model.g_width=8",
            "model.d_width=8",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "mapping.patch_bank_size=500",
            f"paths.log_dir={tmp_path}",
            f"hydra.run.dir={run}",
        ]
    )
    metrics = json.loads((run / "metrics.json").read_text())
    gan = json.loads((run / "gan" / "gan.json").read_text())
    assert gan["self_supervised"] == "rotations" and metrics["correction"] == "none"
    with open(run / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["score"]) == float(r["dpatches"]) for r in rows)  # the score is dpatches
    assert metrics["pixel"]["images"] == sum(r["split"] == "test" for r in rows)  # maps scored against the masks
