"""The folder DataModule (data=folder): your own images, split like CIFAR-10's."""

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from anogan.data.folder import FolderAnomalyDataModule
from anogan.utils.errors import DataError
from conftest import compose_config


def _write(folder, n, brightness, size=40, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(brightness + start)
    for i in range(start, start + n):
        pixels = np.clip(brightness + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")


@pytest.fixture
def image_root(tmp_path):
    _write(tmp_path / "normal", 20, 60)
    _write(tmp_path / "normal" / "more", 5, 60, start=20)  # searched recursively
    _write(tmp_path / "abnormal" / "crack", 6, 200)
    _write(tmp_path / "abnormal" / "scratch", 6, 140, size=24)
    (tmp_path / "normal" / "broken.png").write_bytes(b"not a png")
    return tmp_path


def test_folder_splits_are_disjoint_seeded_and_labelled(image_root, tmp_path):
    cfg = compose_config(
        ["data=folder", f"data.root={image_root}", "data.image_size=32", "data.abnormal_dir=[abnormal/crack,abnormal/scratch]"]
    )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    m = dm.manifest
    s = m["splits"]
    assert s["train"]["size"] == 20 and s["train"]["anomalous"] == 0  # 25 readable normals, 20% held out
    assert s["val"]["size"] + s["test"]["size"] == 5 + 12
    assert s["val"]["normal"] >= 1 and s["val"]["anomalous"] >= 1 and s["test"]["normal"] >= 1 and s["test"]["anomalous"] >= 1
    assert s["val"]["class_counts"]["abnormal/crack"] == 3 and s["test"]["class_counts"]["abnormal/scratch"] == 3  # stratified
    ids = [set(s[k]["ids"]) for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert [x["file"].rsplit("/", 1)[-1] for x in m["skipped"]] == ["broken.png"]
    assert dm.train_set.images.dtype == torch.uint8 and tuple(dm.train_set.images.shape[1:]) == (3, 32, 32)
    assert len(dm.eval_set) == len(dm.eval_split) == 17 and set(dm.eval_split) == {"val", "test"}
    labels = dm.eval_set.labels.numpy()
    files = [m["files"][i] for i in dm.eval_set.ids.tolist()]
    assert all((lab == 1) == f.startswith("abnormal/") for lab, f in zip(labels, files))
    item = dm.eval_set[0]
    assert set(item) == {"image", "label", "id", "row", "key"} and -1 <= item["image"].min() <= item["image"].max() <= 1
    assert next(iter(dm.train_dataloader()))["image"].shape[1:] == (3, 32, 32)
    json.loads(dm.write_manifest(tmp_path).read_text())

    again = FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir=["abnormal/crack", "abnormal/scratch"])
    again.setup()
    assert again.manifest["splits"] == m["splits"]
    other = FolderAnomalyDataModule(
        root=str(image_root), image_size=32, abnormal_dir=["abnormal/crack", "abnormal/scratch"], split_seed=1
    )
    other.setup()
    assert other.manifest["splits"]["val"]["ids"] != m["splits"]["val"]["ids"]


def test_folder_with_a_normal_test_dir_trains_on_every_normal_image(image_root):
    _write(image_root / "good_test", 4, 60, start=50)
    dm = FolderAnomalyDataModule(root=str(image_root), image_size=32, channels=1, normal_test_dir="good_test")
    dm.setup()
    s = dm.manifest["splits"]
    assert s["train"]["size"] == 25 and s["val"]["normal"] + s["test"]["normal"] == 4
    assert tuple(dm.eval_set.images.shape[1:]) == (1, 32, 32)


def test_folder_errors_say_what_to_fix(image_root):
    with pytest.raises(DataError, match="is not a folder"):
        FolderAnomalyDataModule(root=str(image_root), abnormal_dir="missing").prepare_data()
    with pytest.raises(DataError, match="only normal"):  # too few evaluation images for both splits
        FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir="abnormal/crack", val_subset=1).setup()


def test_train_py_runs_on_a_folder_of_images(image_root, tmp_path):
    import csv

    from conftest import train_in_process as run_train

    overrides = [
        "data=folder",
        f"data.root={image_root}",
        "data.image_size=32",
        "data.batch_size=8",
        "model.latent_dim=8",
        "model.g_width=8",
        "model.d_width=8",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "mapping.iterations=2",
        f"paths.log_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}/run",
    ]
    run_train(overrides)
    with open(tmp_path / "run" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    manifest = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert len(rows) == manifest["splits"]["val"]["size"] + manifest["splits"]["test"]["size"]
    assert all(r["source"].endswith(".png") for r in rows)
    assert {r["class_name"] for r in rows} == {"normal", "abnormal"}


# ---------------------------------------------------------------------- every file accounted for
def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_every_file_found_is_used_or_skipped_with_its_reason(tmp_path, caplog):
    import logging
    import os

    from PIL import features

    normal = tmp_path / "normal"
    for i in range(8):
        _write(normal, 1, 60, start=i)  # img00..img07.png, 40x40 RGB PNG
    Image.fromarray(_rgb(40, 40, 1)).save(normal / "x.bmp")
    Image.fromarray(_rgb(40, 40, 2)).save(normal / "UPPER.TIF")
    Image.fromarray(_rgb(40, 40, 3)).save(normal / "png_named.dat", format="PNG")
    Image.fromarray(np.linspace(0, 65535, 1600).astype(np.uint16).reshape(40, 40)).save(normal / "g16.png")
    Image.fromarray(_rgb(40, 40, 4)).save(normal / "anim.gif", save_all=True, append_images=[Image.fromarray(_rgb(40, 40, 5))])
    if features.check("webp"):
        Image.fromarray(_rgb(40, 40, 6)).save(normal / "x.webp", lossless=True)
    (normal / "notes.txt").write_text("not an image")
    png = (normal / "img00.png").read_bytes()
    (normal / "truncated.png").write_bytes(png[: len(png) // 2])
    os.symlink(normal / "img00.png", normal / "link_to_img00.png")
    os.symlink(tmp_path / "nowhere.png", normal / "broken.png")
    os.symlink(normal / "loop_b.png", normal / "loop_a.png")
    os.symlink(normal / "loop_a.png", normal / "loop_b.png")
    readable = 8 + 5 + int(features.check("webp"))

    dm = FolderAnomalyDataModule(root=str(tmp_path), abnormal_dir=None, image_size=32, normal_test_fraction=0.25)
    with caplog.at_level(logging.INFO, logger="anogan.data.folder"):
        dm.setup()
    m = json.loads(dm.write_manifest(tmp_path).read_text())
    assert sorted(m["files"]) == sorted(
        [f"normal/img{i:02d}.png" for i in range(8)]
        + ["normal/x.bmp", "normal/UPPER.TIF", "normal/png_named.dat", "normal/g16.png", "normal/anim.gif"]
        + (["normal/x.webp"] if features.check("webp") else [])
    )
    reasons = {s["file"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {
        "normal/notes.txt",
        "normal/truncated.png",
        "normal/link_to_img00.png",
        "normal/broken.png",
        "normal/loop_a.png",
        "normal/loop_b.png",
    }
    assert reasons["normal/notes.txt"].startswith("not an image")
    assert reasons["normal/truncated.png"].startswith("unreadable")
    assert reasons["normal/link_to_img00.png"].startswith("duplicate")
    assert reasons["normal/broken.png"].startswith("broken symlink")
    assert reasons["normal/loop_a.png"].startswith("looping symlink")
    assert m["resize"] == "stretch" and len(dm.train_set) + len(dm.eval_set) == readable
    summaries = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert summaries == [
        f"{readable} of {readable} images read with interpretation: 1 frames, 1 channels, {readable} resized; see splits.json read_notes",
        f"skipped 6 of {readable + 6} files: 2 looping symlink, 1 broken symlink, 1 duplicate, 1 not an image, 1 unreadable; see splits.json",
    ]
    assert m["read_notes"]["counts"] == {"frames": 1, "channels": 1, "resized": readable}
    # the 16-bit gradient is read as a gradient, not as 255 wherever it is not 0
    g16 = m["files"].index("normal/g16.png")
    where = dm.train_set if g16 in dm.train_set.ids.tolist() else dm.eval_set
    pixels = where.images[where.ids.tolist().index(g16)]
    assert len(torch.unique(pixels)) > 100


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_folder_and_read_image_give_the_same_pixels(tmp_path, resize):
    from anogan.data.images import read_image

    for i in range(6):
        path = tmp_path / "normal" / f"w{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(_rgb(32, 48, i)).save(path)  # 48 wide, 32 high
    dm = FolderAnomalyDataModule(root=str(tmp_path), abnormal_dir=None, image_size=32, resize=resize, normal_test_fraction=0.4)
    dm.setup()
    assert dm.manifest["resize"] == resize and dm.manifest["skipped"] == []
    for split in (dm.train_set, dm.eval_set):
        for image, i in zip(split.images, split.ids.tolist()):
            assert torch.equal(image, read_image(tmp_path / dm.manifest["files"][i], 32, 3, resize))
    assert tuple(dm.train_set.images.shape[1:]) == (3, 32, 32)


def test_resize_is_a_config_key_and_a_bad_policy_names_it(tmp_path):
    cfg = compose_config(["data=folder", f"data.root={tmp_path}", "data.resize=pad", "data.abnormal_dir=null"])
    dm = instantiate(cfg.data)
    assert dm.hparams.resize == "pad" and dm.normal_only
    from anogan.config.checks import check_config
    from anogan.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="data.resize='fit' is not allowed: use one of stretch, crop, pad"):
        check_config(compose_config(["data=folder", f"data.root={tmp_path}", "data.resize=fit"]))


# ---------------------------------------------------------------------- normal-only data
@pytest.mark.parametrize("abnormal_dir", [None, []])
def test_a_normal_only_folder_sets_up_with_normal_validation(image_root, abnormal_dir):
    dm = FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir=abnormal_dir)
    dm.setup()
    s = dm.manifest["splits"]
    assert dm.has_anomalies is False and dm.manifest["has_anomalies"] is False and dm.manifest["classes"] == ["normal"]
    assert s["train"]["size"] == 20 and s["val"]["size"] + s["test"]["size"] == 5
    assert s["val"]["size"] == round(5 * 0.5) and s["val"]["anomalous"] == 0 and s["test"]["anomalous"] == 0
    assert (dm.eval_set.labels == 0).all() and set(dm.eval_split) == {"val", "test"}
    assert set(dm.eval_columns()["class_name"]) == {"normal"}


def test_normal_only_via_the_config(image_root):
    cfg = compose_config(["data=folder", f"data.root={image_root}", "data.image_size=32", "data.abnormal_dir=null"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    assert not dm.has_anomalies and (dm.eval_set.labels == 0).all()


def test_with_anomalies_has_anomalies_is_true_and_missing_classes_still_fail(image_root):
    dm = FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir="abnormal")
    dm.setup()
    assert dm.has_anomalies is True and dm.manifest["splits"]["val"]["anomalous"] >= 1
    with pytest.raises(DataError, match="split has only anomalous images"):
        FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir="abnormal", val_subset=1).setup()
    (image_root / "empty").mkdir()
    (image_root / "empty" / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="abnormal_dir=null"):
        FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir="empty").setup()


def test_normal_only_with_too_few_held_out_images_says_so(tmp_path):
    _write(tmp_path / "normal", 3, 60)
    with pytest.raises(DataError, match="no image"):
        FolderAnomalyDataModule(root=str(tmp_path), image_size=32, abnormal_dir=None).setup()


# ---------------------------------------------------------------------- small folders
def test_small_folder_batch_and_steps_follow_the_data(image_root):
    from anogan.data.training_steps import MIN_AUTO_BATCH

    dm = FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir=None, batch_size=128, min_steps_per_epoch=10)
    dm.setup()
    assert len(dm.train_set) == 20
    assert dm.train_batch_size == MIN_AUTO_BATCH == 8  # a quarter of 20 is 5, never below 8
    batches = list(dm.train_dataloader())
    assert len(batches) == dm.train_steps_per_epoch >= 10 and all(len(b["image"]) == 8 for b in batches)
    assert dm.manifest["training"] == {
        "batch_size": 8,
        "requested_batch_size": 128,
        "repeats_per_epoch": dm.train_repeats,
        "steps_per_epoch": len(batches),
    }
    ids = torch.cat([b["id"] for b in batches])
    assert set(ids.tolist()) <= set(dm.train_set.ids.tolist()) and len(ids) > len(dm.train_set)  # images repeat

    plain = FolderAnomalyDataModule(
        root=str(image_root), image_size=32, abnormal_dir=None, batch_size=128, max_batch_fraction=None, min_steps_per_epoch=None
    )
    plain.setup()
    assert plain.train_batch_size == 128 and plain.train_repeats == 1 and len(list(plain.train_dataloader())) == 1
    assert "trainer.max_epochs=500" in plain.steps_warning(max_epochs=200)
    assert dm.steps_warning(max_epochs=50) is None  # 50 epochs x >= 10 steps


def test_effective_batch_and_steps_rules():
    from anogan.data.training_steps import effective_batch_size, epoch_repeats, steps_per_epoch, training_steps_warning

    assert effective_batch_size(142, 128, 0.25) == 35 and effective_batch_size(10_000, 128, 0.25) == 128
    assert effective_batch_size(10, 128, 0.25) == 8 and effective_batch_size(142, 128, None) == 128
    assert steps_per_epoch(142, 35) == 4 and steps_per_epoch(20, 128) == 1 and steps_per_epoch(0, 8) == 0
    k = epoch_repeats(142, 35, 20)
    assert steps_per_epoch(142 * k, 35) >= 20 and steps_per_epoch(142 * (k - 1), 35) < 20  # the smallest k
    assert epoch_repeats(142, 35, None) == 1 and epoch_repeats(10_000, 128, 10) == 1
    msg = training_steps_warning(142, 128, 200)
    assert msg is not None and "200 GAN iterations" in msg and "trainer.max_epochs=500" in msg
    assert training_steps_warning(142, 35, 200) is None  # 200 x 4 = 800 steps
    assert training_steps_warning(142, 35, 100) is not None and training_steps_warning(142, 35, 100, repeats=2) is None


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_masks_follow_the_resize_policy(tmp_path, resize):
    for i in range(8):
        (tmp_path / "normal").mkdir(exist_ok=True)
        Image.fromarray(_rgb(32, 48, i)).save(tmp_path / "normal" / f"n{i}.png")
    (tmp_path / "bad").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        Image.fromarray(_rgb(32, 48, 10 + i)).save(tmp_path / "bad" / f"b{i}.png")
        mask = np.zeros((32, 48), np.uint8)
        mask[:, 20:28] = 255  # columns 20..27 of the 48-wide image
        Image.fromarray(mask).save(tmp_path / "masks" / f"b{i}_mask.png")
    dm = FolderAnomalyDataModule(
        root=str(tmp_path), abnormal_dir="bad", mask_dir="masks", image_size=32, resize=resize, normal_test_fraction=0.5
    )
    dm.setup()
    anomalous = dm.eval_set.labels == 1
    masks = dm.eval_set.masks[anomalous][:, 0]
    assert masks.shape[1:] == (32, 32) and len(masks) == 4
    cols = masks.any(1).any(0).nonzero().flatten().tolist()
    rows = masks.any(2).any(0).nonzero().flatten().tolist()
    if resize == "crop":  # columns 8..39 kept: the mask moves to 12..19, every row
        assert cols == list(range(12, 20)) and rows == list(range(32))
    else:  # 48x48 with 8 black rows above and below, then 48 -> 32 (x 2/3)
        assert 13 <= cols[0] <= 14 and 18 <= cols[-1] <= 19 and 5 <= rows[0] <= 6 and 26 <= rows[-1] <= 27
    assert (dm.eval_set.masks[~anomalous] == 0).all()


# ---------------------------------------------------------------------- validation sized for threshold.target_fpr
@pytest.mark.parametrize(
    "n_normal,target_fpr,expected",  # (train, validation normals, test normals)
    [
        (140, 0.05, (112, 19, 9)),  # today: 14 validation normals, the 5% threshold is +inf
        (60, 0.05, (40, 19, 1)),  # 12 held out by the fraction: raised to 20
        (60, 0.1, (48, 9, 3)),  # 9 needed at 10%
        (40, 0.5, (32, 4, 4)),  # the fraction already gives enough: the split of today
    ],
)
def test_a_normal_only_folder_holds_out_the_validation_normals_the_target_rate_needs(tmp_path, n_normal, target_fpr, expected):
    import math

    from anogan.metrics.image import fpr_threshold

    _write(tmp_path / "normal", n_normal, 60, size=8)
    cfg = compose_config(
        [
            "data=folder",
            f"data.root={tmp_path}",
            "data.image_size=32",
            "data.abnormal_dir=null",
            f"threshold.target_fpr={target_fpr}",
        ]
    )
    dm = instantiate(cfg.data)
    dm.setup()
    s = dm.manifest["splits"]
    assert (s["train"]["size"], s["val"]["normal"], s["test"]["normal"]) == expected
    assert dm.manifest["calibration"] == {
        "target_fpr": target_fpr,
        "val_normals": expected[1],
        "min_val_normals": expected[1] if target_fpr < 0.5 else 1,
        "reachable": True,
    }
    assert math.isfinite(fpr_threshold(torch.rand(s["val"]["normal"], dtype=torch.float64), target_fpr))


def test_a_folder_too_small_for_the_target_rate_keeps_its_split_and_says_why(tmp_path, caplog):
    import logging

    _write(tmp_path / "normal", 25, 60, size=8)
    cfg = compose_config(["data=folder", f"data.root={tmp_path}", "data.image_size=32", "data.abnormal_dir=null"])
    dm = instantiate(cfg.data)
    with caplog.at_level(logging.WARNING, logger="anogan.data.folder"):
        dm.setup()
    s = dm.manifest["splits"]
    assert (s["train"]["size"], s["val"]["size"], s["test"]["size"]) == (20, 2, 3)  # 19 + 1 would leave fewer than half
    assert dm.manifest["calibration"]["reachable"] is False
    assert "the validation split holds 2 normal images; threshold.target_fpr=0.05 needs at least 19" in caplog.text
    assert "raise data.normal_test_fraction or data.val_fraction" in caplog.text and "threshold.target_fpr=0.334" in caplog.text
