"""Duplicate pictures across splits (anogan.data.duplicates, data.duplicates / data.near_duplicates)."""

import logging
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from anogan.data.cifar10 import CIFAR10AnomalyDataModule
from anogan.data.duplicates import average_hash, check_policy, duplicate_groups, pixel_digest
from anogan.data.folder import FolderAnomalyDataModule
from anogan.data.mvtec import MVTecDataModule
from anogan.data.reading import load_pixels
from anogan.utils.errors import DataError
from conftest import write_tiny_cifar
from test_config_defaults import config_refusal
from test_mvtec import write_tiny_mvtec


def _picture(seed, size=32):
    """A smooth random picture (so a JPEG re-encoding stays close to it)."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((size, size), Image.BILINEAR))


def _save(pixels, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kw)


def _folder(tmp_path, n_normal=20, n_abnormal=6):
    for i in range(n_normal):
        _save(_picture(i), tmp_path / "normal" / f"n{i:02d}.png")
    for i in range(n_abnormal):
        _save(_picture(1000 + i), tmp_path / "abnormal" / f"a{i:02d}.png")
    return tmp_path


def _pixel_sets(dm):
    """Bytes of every training and every evaluation image (model input), for cross-checks."""
    train = {bytes(x.numpy().tobytes()) for x in dm.train_set.images}
    evaluation = [bytes(x.numpy().tobytes()) for x in dm.eval_set.images]
    return train, evaluation


# ---------------------------------------------------------------------- the hash
def test_the_same_picture_as_png_bmp_and_tiff_has_one_digest_a_jpeg_does_not(tmp_path):
    pixels = _picture(1)
    for name in ("a.png", "b.bmp", "c.tif"):
        _save(pixels, tmp_path / name)
    _save(pixels, tmp_path / "d.jpg", quality=90)
    digests = [pixel_digest(load_pixels(tmp_path / n)) for n in ("a.png", "b.bmp", "c.tif", "d.jpg")]
    assert digests[0] == digests[1] == digests[2] != digests[3]
    grey = pixels[..., :1]
    assert pixel_digest(np.repeat(grey, 3, axis=2)) == pixel_digest(grey)  # grey saved as RGB: one picture
    assert pixel_digest(pixels[:, :31]) != pixel_digest(pixels[:, 1:])  # different pictures, also by shape


def test_groups_join_exact_and_near_copies_transitively():
    digests = [b"a", b"b", b"a", b"c", b"d"]
    assert duplicate_groups(digests).tolist() == [0, 1, 0, 3, 4]
    near = np.array([0b0000, 0b1111, 0b0000, 0b1110, 0xFFFF_0000_0000_0000], dtype=np.uint64)
    assert duplicate_groups(digests, near, 1).tolist() == [0, 1, 0, 1, 4]  # 0b1111 ~ 0b1110 (1 bit)
    assert duplicate_groups(digests, near, 0).tolist() == [0, 1, 0, 3, 4]


def test_average_hash_of_a_jpeg_reencoding_is_close(tmp_path):
    pixels = _picture(3, 64)
    _save(pixels, tmp_path / "a.png")
    _save(pixels, tmp_path / "a.jpg", quality=75)
    images = torch.stack([torch.from_numpy(load_pixels(tmp_path / n).copy()).permute(2, 0, 1) for n in ("a.png", "a.jpg")])
    other = torch.from_numpy(_picture(4, 64)).permute(2, 0, 1)[None]
    h = average_hash(torch.cat([images, other]))
    bits = [bin(int(h[0]) ^ int(x)).count("1") for x in h[1:]]
    assert bits[0] <= 2 < 10 < bits[1]


# ---------------------------------------------------------------------- the folder module
def test_copies_in_the_normal_test_folder_are_dropped_from_evaluation_and_reported(tmp_path, caplog):
    root = _folder(tmp_path)
    for i in range(6):  # 3 copies of training images under other names and formats, 3 new pictures
        pixels = _picture(i) if i < 3 else _picture(500 + i)
        _save(pixels, root / "held" / f"h{i}.bmp")
    kw = dict(root=str(root), image_size=32, normal_test_dir="held", abnormal_dir="abnormal")
    with caplog.at_level(logging.WARNING, logger="anogan.data.folder"):
        dm = FolderAnomalyDataModule(**kw)
        dm.setup()
    train, evaluation = _pixel_sets(dm)
    assert not any(e in train for e in evaluation)  # today: 3 evaluation normals are training images
    dup = dm.manifest["duplicates"]
    assert dup["policy"] == "drop" and dup["dropped"] == 3
    assert sorted((a["file"], a["copy_of"], a["action"]) for a in dup["across"]) == [
        (f"held/h{i}.bmp", f"normal/n{i:02d}.png", "dropped") for i in range(3)
    ]
    assert {s["file"] for s in dm.manifest["skipped"] if s["reason"].startswith("duplicate")} == {
        f"held/h{i}.bmp" for i in range(3)
    }
    s = dm.manifest["splits"]
    assert s["val"]["normal"] + s["test"]["normal"] == 3
    assert "duplicates: 3 evaluation images show the same picture" in caplog.text and "data.duplicates=drop" in caplog.text

    kept = FolderAnomalyDataModule(**kw, duplicates="keep")
    kept.setup()
    assert kept.manifest["duplicates"]["dropped"] == 0 and len(kept.manifest["duplicates"]["across"]) == 3
    assert kept.manifest["splits"]["val"]["normal"] + kept.manifest["splits"]["test"]["normal"] == 6
    with pytest.raises(DataError, match=r"3 evaluation images show the same picture as train images: held/h0.bmp"):
        FolderAnomalyDataModule(**kw, duplicates="refuse").setup()


def test_a_training_image_copied_into_the_anomalous_folder_is_not_evaluated(tmp_path):
    root = _folder(tmp_path)
    _save(_picture(0), root / "abnormal" / "looks_bad.png")  # n00 is normal: one picture, two labels
    _save(_picture(1), root / "abnormal" / "also.png")
    dm = FolderAnomalyDataModule(root=str(root), image_size=32, normal_test_fraction=0.2, split_seed=0)
    dm.setup()
    train, evaluation = _pixel_sets(dm)
    assert not any(e in train for e in evaluation)
    trained = {dm.manifest["files"][i] for i in dm.manifest["splits"]["train"]["ids"]}
    assert {"normal/n00.png", "normal/n01.png"} <= trained  # (split_seed 0)
    assert sorted((a["file"], a["copy_of"], a["split"], a["action"]) for a in dm.manifest["duplicates"]["across"]) == [
        ("abnormal/also.png", "normal/n01.png", "evaluation", "dropped"),
        ("abnormal/looks_bad.png", "normal/n00.png", "evaluation", "dropped"),
    ]
    assert dm.manifest["splits"]["val"]["anomalous"] + dm.manifest["splits"]["test"]["anomalous"] == 6


def test_copies_inside_the_normal_folder_stay_on_one_side_of_the_split(tmp_path):
    for i in range(15):  # every picture twice: a PNG and a BMP copy under another name
        _save(_picture(i), tmp_path / "normal" / f"n{i:02d}.png")
        _save(_picture(i), tmp_path / "normal" / f"copy_of_{i:02d}.bmp")
    dm = FolderAnomalyDataModule(root=str(tmp_path), image_size=32, abnormal_dir=None, normal_test_fraction=0.4)
    dm.setup()
    train, evaluation = _pixel_sets(dm)
    assert not any(e in train for e in evaluation)  # today: random rows split pairs across train and evaluation
    dup = dm.manifest["duplicates"]
    assert dup["dropped"] == 0 and not [a for a in dup["across"] if a["copy_in"] == "train"]
    assert len(dm.train_set) == 2 * 9 and len(dup["within"]["train"]) == 9  # 15 pictures, 6 held out
    assert all(len(g) == 2 for g in dup["within"]["train"])


def test_near_duplicates_are_an_option(tmp_path):
    root = _folder(tmp_path, n_normal=12)
    _save(_picture(0, 32), root / "abnormal" / "reencoded.jpg", quality=80)
    exact = FolderAnomalyDataModule(root=str(root), image_size=32, normal_test_fraction=0.25)
    exact.setup()
    assert not exact.manifest["duplicates"]["across"]
    near = FolderAnomalyDataModule(root=str(root), image_size=32, normal_test_fraction=0.25, near_duplicates=2)
    near.setup()
    found = [(a["file"], a["copy_of"], a["copy_in"]) for a in near.manifest["duplicates"]["across"]]
    assert found == [("abnormal/reencoded.jpg", "normal/n00.png", "train")]  # n00 is trained on (split_seed 0)
    assert "near: 64-bit average hash, at most 2 bits apart" in near.manifest["duplicates"]["method"]


# ---------------------------------------------------------------------- MVTec layout and CIFAR-10
def test_mvtec_test_copies_of_training_images_are_dropped(tmp_path):
    root = write_tiny_mvtec(tmp_path / "mvtec")
    train = root / "widget" / "train" / "good"
    for name in ("000.png", "001.png"):
        Image.open(train / name).save(root / "widget" / "test" / "good" / f"copy_{name}")
    dm = MVTecDataModule(root=str(root), category="widget", image_size=32)
    dm.setup()
    dup = dm.manifest["duplicates"]
    assert sorted(a["file"] for a in dup["across"]) == ["test/good/copy_000.png", "test/good/copy_001.png"]
    assert all(a["copy_in"] == "train" and a["action"] == "dropped" for a in dup["across"])
    train_px, evaluation = _pixel_sets(dm)
    assert not any(e in train_px for e in evaluation)


def test_cifar_test_copy_of_a_training_image_is_dropped(tmp_path):
    root = write_tiny_cifar(tmp_path)
    folder = root / "cifar-10-batches-py"
    with open(folder / "data_batch_1", "rb") as f:
        train = pickle.load(f)
    with open(folder / "test_batch", "rb") as f:
        test = pickle.load(f)
    car = train["labels"].index(1)
    test["data"][0] = train["data"][car]  # a training car in the test set, labelled car
    test["labels"][0] = 1
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(test, f)
    dm = CIFAR10AnomalyDataModule(root=str(root), download=False, verify_checksums=False, image_size=32, normal_class=1)
    dm.setup()
    assert car in dm.manifest["splits"]["train"]["ids"]  # (split_seed 0)
    across = dm.manifest["duplicates"]["across"]
    assert across == [{"file": "test[0]", "split": "test", "copy_of": f"train[{car}]", "copy_in": "train", "action": "dropped"}]
    assert 50_000 not in dm.manifest["splits"]["test"]["ids"] and dm.manifest["splits"]["test"]["size"] == 99


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.duplicates=skip", "data.duplicates='skip' is not allowed: use one of drop, refuse, keep"),
        ("data.near_duplicates=40", "data.near_duplicates=40 is not allowed: use null (exact copies only)"),
        ("data.target_fpr=1.5", "data.target_fpr=1.5 is not allowed"),
    ],
)
def test_bad_duplicate_and_target_settings_name_the_key(override, message):
    from anogan.config.schema import validate
    from anogan.utils.errors import ConfigError
    from conftest import compose_config

    validate(compose_config(["data=folder"]))  # the defaults pass
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config(["data=folder", override]))


def test_a_bad_policy_from_python_is_refused_at_setup(tmp_path):
    with pytest.raises(DataError, match="data.duplicates='skip': use one of drop, refuse, keep"):
        FolderAnomalyDataModule(root=str(_folder(tmp_path)), image_size=32, duplicates="skip").setup()


@pytest.mark.parametrize(
    "policy,near,override",
    [
        ("skip", None, "data.duplicates=skip"),
        ("drop", 40, "data.near_duplicates=40"),
        ("drop", -1, "data.near_duplicates=-1"),
    ],
)
def test_check_policy_refuses_with_the_configs_rule_and_words(policy, near, override):
    """A policy or distance given from Python is refused with the same line as in a config."""
    with pytest.raises(DataError) as caught:
        check_policy(policy, near)
    assert str(caught.value) == config_refusal(["data=folder", override], "data")
    check_policy("keep", 0)
    check_policy("refuse", None)
