"""No input changes a score silently: every input whose pixels the reader had to interpret is scored
by the documented rule and said once (Predictions.warnings, predict's log and CSV ``notes``)."""

import csv
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import anogan
from anogan.cli.predict import predict
from anogan.data import notes as read_notes
from anogan.data.folder import FolderAnomalyDataModule
from anogan.data.images import to_model_input
from anogan.data.reading import check_alpha, read_array, read_pixels
from anogan.deploy.api import Detector
from anogan.utils.errors import DataError, ImageError, InputError
from test_config_defaults import config_refusal

SIZE = 32


def _picture(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """A smooth colour picture (uint8 size×size×3) with some texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([160 * x + 40, 160 * y + 40, 200 - 120 * x * y], axis=2)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _grey(size: int = SIZE) -> np.ndarray:
    return _picture(size).mean(axis=2).round().astype(np.uint8)


# ---------------------------------------------------------------------- the cases: (file, plain form, note)
def _rgba(tmp_path):
    rgb = _picture()
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[:, SIZE // 2 :] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    plain = rgb.copy()
    plain[:, SIZE // 2 :] = 0  # flattened on black: painted black
    Image.fromarray(plain).save(tmp_path / "rgba_plain.png")
    return tmp_path / "rgba.png", tmp_path / "rgba_plain.png", "transparency flattened on black (50% of pixels not opaque)"


def _palette(tmp_path):
    rgb = _picture()
    pal = Image.fromarray(rgb).quantize(16)
    index = np.asarray(pal)
    chosen = int(index[0, 0])
    pal.info["transparency"] = chosen
    pal.save(tmp_path / "palette.png", transparency=chosen)
    plain = np.asarray(pal.convert("RGB")).copy()
    plain[index == chosen] = 0
    Image.fromarray(plain).save(tmp_path / "palette_plain.png")
    share = f"{100 * float((index == chosen).mean()):.3g}%"
    return (
        tmp_path / "palette.png",
        tmp_path / "palette_plain.png",
        f"transparency flattened on black ({share} of pixels not opaque)",
    )


def _float_tiff(tmp_path):
    grey = _grey()
    Image.fromarray((grey / 255.0).astype(np.float32)).save(tmp_path / "float.tif")
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "float_plain.png")  # as the colour model sees it
    return tmp_path / "float.tif", tmp_path / "float_plain.png", "float pixels taken as intensity in [0, 1] (× 255)"


def _low_16_bit(tmp_path):
    values = (_grey().astype(np.float64) * 1000 / 255).round().astype(np.uint16)  # 0..1000 of 65535
    Image.fromarray(values).save(tmp_path / "low16.png")
    stored = np.rint(values * 255.0 / 65535).astype(np.uint8)  # as stored
    Image.fromarray(np.dstack([stored] * 3)).save(tmp_path / "low16_plain.png")
    top = int(values.max())
    return tmp_path / "low16.png", tmp_path / "low16_plain.png", f"16-bit values only reach {top} of 65535 (under 1/16"


def _gif(tmp_path):
    first, second = _grey(), 255 - _grey()
    frames = [Image.fromarray(first), Image.fromarray(second)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.open(tmp_path / "anim.gif").convert("RGB").save(tmp_path / "anim_plain.png")
    return tmp_path / "anim.gif", tmp_path / "anim_plain.png", "first of 2 frames used"


def _grey_png(tmp_path):
    grey = _grey()
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "grey_plain.png")
    return tmp_path / "grey.png", tmp_path / "grey_plain.png", "grey copied to 3 channels (the model is colour)"


def _twice(tmp_path):
    rgb = _picture()
    Image.fromarray(rgb.repeat(2, axis=0).repeat(2, axis=1)).save(tmp_path / "twice.png")  # nearest-neighbour 2x
    Image.fromarray(rgb).save(tmp_path / "twice_plain.png")
    return tmp_path / "twice.png", tmp_path / "twice_plain.png", "resized from 64×64 to 32×32 (2× area average)"


def _aspect(tmp_path):
    wide = _picture(40)[:SIZE]  # 40 wide, 32 high
    Image.fromarray(wide).save(tmp_path / "wide.png")
    plain = to_model_input(wide, SIZE, 3).permute(1, 2, 0).numpy()  # today's rule: stretched, bilinear
    Image.fromarray(plain).save(tmp_path / "wide_plain.png")
    return (
        tmp_path / "wide.png",
        tmp_path / "wide_plain.png",
        "resized from 40×32 to 32×32 (stretched to a square, bilinear, antialiased)",
    )


CASES = {
    "rgba": _rgba,
    "palette": _palette,
    "float_tiff": _float_tiff,
    "low_16_bit": _low_16_bit,
    "gif": _gif,
    "grey": _grey_png,
    "twice": _twice,
    "aspect": _aspect,
}


# ---------------------------------------------------------------------- the reader alone
@pytest.mark.parametrize("case", CASES)
def test_each_case_reads_as_its_plain_form_with_one_note(case, tmp_path):
    path, plain, note = CASES[case](tmp_path)
    pixels, notes = read_pixels(path)
    plain_pixels, plain_notes = read_pixels(plain)
    assert plain_notes == []
    got = to_model_input(pixels, SIZE, 3)
    want = to_model_input(plain_pixels, SIZE, 3)
    assert torch.equal(got, want)
    assert note in read_notes.text(notes + _model_notes(pixels))


def _model_notes(pixels):
    from anogan.data.images import model_input_notes

    return model_input_notes(pixels.shape, SIZE, 3)


def test_alpha_white_and_refuse(tmp_path):
    path, _, _ = _rgba(tmp_path)
    white, notes = read_pixels(path, alpha="white")
    assert (white[:, SIZE // 2 :] == 255).all() and np.array_equal(white[:, : SIZE // 2], _picture()[:, : SIZE // 2])
    assert read_notes.text(notes) == "transparency flattened on white (50% of pixels not opaque)"
    with pytest.raises(ImageError, match=r"transparent pixels \(50% of pixels not opaque; data.alpha=refuse\)"):
        read_pixels(path, alpha="refuse")
    opaque = np.dstack([_picture(), np.full((SIZE, SIZE), 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    assert read_pixels(tmp_path / "opaque.png", alpha="refuse")[1] == []  # nothing to flatten: nothing said


def test_float_files_and_arrays_follow_one_rule(tmp_path):
    Image.fromarray(_grey().astype(np.float32)).save(tmp_path / "f255.tif")  # 0..255 stored as floats
    with pytest.raises(ImageError, match=r"float pixels outside \[0, 1\] \(they span .*\): save the values divided by 255"):
        read_pixels(tmp_path / "f255.tif")
    with pytest.raises(ImageError, match=r"divide 8-bit values by 255"):
        read_array(_grey().astype(np.float32))
    with pytest.raises(ImageError, match=r"they span \[-1, 1\]\): for data in \[-1, 1\] use \(x \+ 1\) / 2"):
        read_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4))
    assert read_array((_grey() / 255.0).astype(np.float32))[1] == []  # a float array's documented meaning
    low = (_grey().astype(np.uint16) * 4)[..., None]  # a uint16 array under 1/16: as a file
    assert "16-bit values only reach" in read_notes.text(read_array(low)[1])


def test_whole_factor_downscale_is_an_area_average_and_other_sizes_bilinear():
    rgb = _picture()
    assert torch.equal(to_model_input(rgb.repeat(4, 0).repeat(4, 1), SIZE, 3), to_model_input(rgb, SIZE, 3))
    tall = rgb.repeat(2, 0)  # 32 wide, 64 high: 2×1 blocks
    assert torch.equal(to_model_input(tall, SIZE, 3), to_model_input(rgb, SIZE, 3))
    bilinear = to_model_input(rgb.repeat(2, 0).repeat(2, 1), SIZE, 3, downscale="bilinear")
    assert not torch.equal(bilinear, to_model_input(rgb, SIZE, 3))  # what scorer files without the rule keep


# ---------------------------------------------------------------------- the API and predict.py
@pytest.fixture(scope="module")
def detector(fitted_run) -> Detector:
    return anogan.load(fitted_run.run_dir, device="cpu")


@pytest.mark.parametrize("case", CASES)
def test_each_case_scores_as_its_plain_form_and_is_said_everywhere(case, detector, fitted_run, tmp_path, caplog):
    path, plain, note = CASES[case](tmp_path)
    result = detector.predict([path, plain])
    assert result.rows[0]["score"] == result.rows[1]["score"]  # the rule: the same pixels, the same score
    assert note in result.rows[0]["notes"] and result.rows[1]["notes"] == ""
    assert [w for w in result.warnings if w.startswith(str(path))] == [f"{path}: {result.rows[0]['notes']}"]
    assert not any(w.startswith(str(plain)) for w in result.warnings)
    caplog.set_level(logging.INFO)
    out = tmp_path / "pred.csv"
    predict(ckpt=fitted_run.run_dir, input=path, out=out, device="cpu")
    with open(out) as f:
        (row,) = list(csv.DictReader(f))
    assert row["notes"] == result.rows[0]["notes"] and float(row["score"]) == pytest.approx(result.rows[0]["score"], rel=1e-6)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.getMessage().startswith(str(path))]
    assert lines == [f"{path}: {row['notes']}"]


def test_a_folder_of_mixed_inputs_gives_one_summary_line(fitted_run, tmp_path, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for make in (_rgba, _gif, _twice):
        make(folder)
    caplog.set_level(logging.INFO)
    out = tmp_path / "mixed.csv"
    result = predict(ckpt=fitted_run.run_dir, input=folder, out=out, device="cpu")
    assert len(result["rows"]) == 6
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "interpretation" in r.getMessage()]
    assert not any(r.getMessage().startswith(str(folder)) for r in caplog.records)  # no line per file
    assert lines == [
        f"3 of 6 images read with interpretation: 1 transparency, 1 frames, 1 resized; see the notes column of {out}"
    ]
    with open(out) as f:
        notes = {r["path"].rsplit("/", 1)[-1]: r["notes"] for r in csv.DictReader(f)}
    assert notes["twice.png"] == "resized from 64×64 to 32×32 (2× area average)" and notes["twice_plain.png"] == ""


def test_the_runs_alpha_rule_travels_in_the_scorer_file(fitted_run, tmp_path):
    payload = torch.load(fitted_run.run_dir / "scorer.pt", weights_only=True)
    assert payload["preprocess"]["alpha"] == "black" and payload["preprocess"]["downscale"] == "area"
    path, _, _ = _rgba(tmp_path)
    white = _picture()
    white[:, SIZE // 2 :] = 255
    for rule in ("white", "refuse"):
        torch.save({**payload, "preprocess": {**payload["preprocess"], "alpha": rule}}, tmp_path / f"{rule}.pt")
    on_white = anogan.load(tmp_path / "white.pt", device="cpu").predict([path, white])
    assert on_white.rows[0]["score"] == on_white.rows[1]["score"]
    assert on_white.rows[0]["notes"] == "transparency flattened on white (50% of pixels not opaque)"
    refusing = anogan.load(tmp_path / "refuse.pt", device="cpu")
    with pytest.raises(InputError, match="data.alpha=refuse"):
        refusing.predict(path)
    assert refusing.predict(path, errors="skip").skipped[0][1].startswith("transparent pixels")


def test_an_old_scorer_file_keeps_the_rules_it_was_read_by(fitted_run, tmp_path):
    payload = torch.load(fitted_run.run_dir / "scorer.pt", weights_only=True)
    prep = {k: v for k, v in payload["preprocess"].items() if k not in ("alpha", "downscale")}
    torch.save({**payload, "preprocess": prep}, tmp_path / "old.pt")
    old = anogan.load(tmp_path / "old.pt", device="cpu")
    assert (old.alpha, old.downscale) == ("black", "bilinear")
    twice = _picture().repeat(2, 0).repeat(2, 1)
    assert torch.equal(old.model_input(twice), to_model_input(twice, SIZE, 3, downscale="bilinear"))
    assert old.predict(twice).rows[0]["notes"] == "resized from 64×64 to 32×32 (bilinear, antialiased)"


def test_messages_echo_the_input_and_say_the_layout(detector):
    with pytest.raises(
        InputError, match=r"input\[0\]: a tensor of shape \(32, 32, 3\) is not an image: .*tensor.permute\(2, 0, 1\)"
    ):
        detector.predict(torch.rand(SIZE, SIZE, 3))
    with pytest.raises(InputError, match=r"an array of shape \(3, 32, 32\) is not an image: .*array.transpose\(1, 2, 0\)"):
        detector.predict(np.zeros((3, SIZE, SIZE), np.uint8))
    with pytest.raises(InputError, match=r"\(x \+ 1\) / 2"):
        detector.predict(torch.rand(1, 3, SIZE, SIZE) * 2 - 1)


def test_maps_overlay_is_drawn_over_the_model_input(detector, fitted_run, tmp_path):
    from matplotlib import colormaps

    path, _, _ = _low_16_bit(tmp_path)  # re-read by Pillow as RGB it would be all white; scored, it is dark
    predict(ckpt=fitted_run.run_dir, input=path, out=tmp_path / "m.csv", maps=True, device="cpu")
    overlay = np.asarray(Image.open(tmp_path / "m_maps" / "low16_overlay.png"))
    result = detector.predict(path, maps=True)
    vmax = float(np.quantile(result.maps[0].ravel(), 0.99))
    heat = (colormaps["jet"](np.clip(result.model_maps[0].numpy() / vmax, 0, 1))[..., :3] * 255).astype(np.uint8)
    scored = Image.fromarray(result.inputs[0].permute(1, 2, 0).numpy())
    assert np.array_equal(overlay, np.asarray(Image.blend(scored, Image.fromarray(heat), 0.45)))
    assert scored.size == (SIZE, SIZE) and np.asarray(scored).max() < 8  # the dark picture the model saw


def test_a_training_folder_counts_its_notes_once(tmp_path, caplog):
    normal = tmp_path / "normal"
    normal.mkdir()
    for i in range(10):
        Image.fromarray(_picture(seed=i)).save(normal / f"p{i}.png")
    for i in range(3):
        rgba = np.dstack([_picture(seed=20 + i), np.full((SIZE, SIZE), 128, np.uint8)])
        Image.fromarray(rgba, "RGBA").save(normal / f"t{i}.png")
    Image.fromarray(_picture(64)).save(normal / "big.png")
    caplog.set_level(logging.INFO)
    dm = FolderAnomalyDataModule(root=str(tmp_path), abnormal_dir=None, image_size=SIZE, alpha="white")
    dm.setup()
    entry = dm.manifest["read_notes"]
    assert entry["images_read"] == 14 and entry["with_notes"] == 4
    assert entry["counts"] == {"transparency": 3, "resized": 1}
    assert entry["examples"]["transparency"] == {
        "file": "normal/t0.png",
        "note": "transparency flattened on white (100% of pixels not opaque)",
    }
    assert dm.manifest["alpha"] == "white"
    lines = [r.getMessage() for r in caplog.records if "interpretation" in r.getMessage()]
    assert lines == ["4 of 14 images read with interpretation: 3 transparency, 1 resized; see splits.json read_notes"]


@pytest.mark.parametrize("data", ["folder", "mvtec"])
def test_check_alpha_refuses_with_the_configs_rule_and_words(data):
    """A rule given from Python is refused with the same line as data.alpha in a config."""
    with pytest.raises(DataError) as caught:
        check_alpha("glow")
    assert str(caught.value) == config_refusal([f"data={data}", "data.alpha=glow"], "data")
    assert check_alpha("white") == "white"
