"""The one image reader (anogan.data.images): formats, modes, bit depths, EXIF, alpha, resize
policies and which files are listed or skipped. Every file is written by the test."""

import os

import numpy as np
import pytest
import torch
from PIL import Image, features

from anogan.data.images import PAD_FILL, check_resize, make_square, read_image, to_model_input
from anogan.data.listing import list_images
from anogan.data.reading import load_pixels
from anogan.utils.errors import DataError, ImageError
from test_config_defaults import config_refusal

RNG = np.random.default_rng(0)


def _rgb(h=32, w=32):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(pixels, path, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt, **kw)
    return path


# ---------------------------------------------------------------------- 8-bit modes
def test_png_grey_and_rgb_are_read_exactly(tmp_path):
    grey = RNG.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = _rgb()
    assert np.array_equal(load_pixels(_save(grey, tmp_path / "g.png")), grey[..., None])
    assert np.array_equal(load_pixels(_save(rgb, tmp_path / "c.png")), rgb)
    # as the model's input at the file's own size: no resize, grey -> 1 channel, colour -> 3
    assert torch.equal(read_image(tmp_path / "g.png", 32, 1), torch.from_numpy(grey)[None])
    assert torch.equal(read_image(tmp_path / "c.png", 32, 3), torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal(read_image(tmp_path / "g.png", 32, 3), torch.from_numpy(grey)[None].expand(3, -1, -1))


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3], rgba[1, :, 3], rgba[2:, :, 3] = 255, 128, 0
    got = load_pixels(_save(rgba, tmp_path / "a.png"))
    assert got.shape == (4, 4, 3)
    assert got[0, 0].tolist() == [200, 100, 50]  # opaque: unchanged
    assert got[1, 0].tolist() == [100, 50, 25]  # half transparent: value * 128 / 255, rounded
    assert got[2:].max() == 0  # transparent: black


def test_grey_alpha_is_composited_on_black(tmp_path):
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 0], la[0, :, 1], la[1, :, 1] = 200, 255, 0
    got = load_pixels(_save(la, tmp_path / "la.png"))
    assert got.shape == (2, 2, 1) and got[0, 0, 0] == 200 and got[1, 0, 0] == 0


def test_palette_png_is_expanded_to_its_colours(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([10, 20, 30, 200, 100, 0] + [0, 0, 0] * 254)
    img.putdata([0, 1, 1, 0, 1, 1, 0, 0])
    img.save(tmp_path / "p.png")
    got = load_pixels(tmp_path / "p.png")
    assert got.shape == (2, 4, 3)
    assert got[0, 0].tolist() == [10, 20, 30] and got[0, 1].tolist() == [200, 100, 0] and got[1, 3].tolist() == [10, 20, 30]


def test_palette_with_a_transparent_index_is_black_there(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 0] + [0, 0, 0] * 254)
    img.putdata([0, 1])
    img.save(tmp_path / "pt.png", transparency=1)
    got = load_pixels(tmp_path / "pt.png")
    assert got[0, 0].tolist() == [10, 20, 30] and got[0, 1].tolist() == [0, 0, 0]


def test_bmp_is_read(tmp_path):
    rgb = _rgb(20, 20)
    assert np.array_equal(load_pixels(_save(rgb, tmp_path / "x.bmp")), rgb)


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow has no WEBP support")
def test_webp_lossless_is_read(tmp_path):
    rgb = _rgb(20, 20)
    assert np.array_equal(load_pixels(_save(rgb, tmp_path / "x.webp", lossless=True)), rgb)


# ---------------------------------------------------------------------- high bit depth
def test_16_bit_grey_png_keeps_its_gradient(tmp_path):
    values = np.linspace(0, 65535, 256).round().astype(np.uint16)
    values[128] = 32768
    gradient = np.tile(values, (4, 1))
    Image.fromarray(gradient).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really stored and read as 16-bit
    got = load_pixels(tmp_path / "g16.png")[0, :, 0].astype(int)
    assert got[0] == 0 and got[-1] == 255 and got[128] == 128  # 65535 -> 255, 32768 -> 128
    assert (np.diff(got) >= 0).all() and len(np.unique(got)) > 200  # monotone, not clipped to 0/255
    assert np.abs(got - values / 257.0).max() <= 0.5  # v * 255 / 65535, rounded


def test_16_bit_big_endian_tiff_is_scaled_the_same(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=">u2")
    Image.frombytes("I;16B", (4, 1), values.tobytes()).save(tmp_path / "b.tif")
    assert load_pixels(tmp_path / "b.tif")[0, :, 0].tolist() == [0, 1, 128, 255]


def test_32_bit_float_tiff_in_unit_range_and_beyond(tmp_path):
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(unit).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert load_pixels(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 64, 128, 255]  # round(v * 255)
    wide = np.array([[-10.0, 0.0, 10.0, 30.0]], dtype=np.float32)
    Image.fromarray(wide).save(tmp_path / "w.tif")
    with pytest.raises(
        ImageError, match=r"float pixels outside \[0, 1\] \(they span \[-10, 30\]\): save the values divided by 255"
    ):
        load_pixels(tmp_path / "w.tif")  # the rule of float arrays: brightness is never stretched away
    nan = np.array([[0.0, np.nan]], dtype=np.float32)
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match="NaN"):
        load_pixels(tmp_path / "nan.tif")


def test_32_bit_int_tiff_is_16_bit_range_or_min_max(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert load_pixels(tmp_path / "i.tif")[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[100000, 150000, 200000]], dtype=np.int32)).save(tmp_path / "big.tif")
    assert load_pixels(tmp_path / "big.tif")[0, :, 0].tolist() == [0, 128, 255]


# ---------------------------------------------------------------------- frames, EXIF
def test_multi_page_tiff_gives_its_first_page(tmp_path):
    first, second = _rgb(16, 16), _rgb(16, 16)
    Image.fromarray(first).save(tmp_path / "m.tiff", save_all=True, append_images=[Image.fromarray(second)])
    assert Image.open(tmp_path / "m.tiff").n_frames == 2
    assert np.array_equal(load_pixels(tmp_path / "m.tiff"), first)


def test_animated_gif_gives_its_first_frame(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    green = np.zeros((8, 8, 3), np.uint8)
    green[..., 1] = 255
    Image.fromarray(red).save(tmp_path / "a.gif", save_all=True, append_images=[Image.fromarray(green)], duration=100)
    assert Image.open(tmp_path / "a.gif").n_frames == 2
    got = load_pixels(tmp_path / "a.gif")
    assert got.shape == (8, 8, 3) and (got == [255, 0, 0]).all()


def test_jpeg_exif_orientation_is_applied(tmp_path):
    # 24 rows x 40 columns, four flat quadrants (JPEG keeps flat blocks nearly exact)
    image = np.zeros((24, 40, 3), np.uint8)
    image[:12, :20], image[:12, 20:], image[12:, :20], image[12:, 20:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(image).save(tmp_path / "o.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(image).save(tmp_path / "plain.jpg", quality=95)
    got = load_pixels(tmp_path / "o.jpg")
    plain = load_pixels(tmp_path / "plain.jpg")  # the same JPEG data without the tag
    assert plain.shape == (24, 40, 3) and got.shape == (40, 24, 3)
    assert np.array_equal(got, np.rot90(plain, k=-1))  # turned clockwise, exactly
    assert not np.array_equal(got, np.rot90(plain, k=1))
    # the upright image: top-left is the original's bottom-left quadrant (blue), top-right its top-left (red)
    assert np.abs(got[2, 2].astype(int) - (0, 0, 250)).max() < 12 and np.abs(got[2, 21].astype(int) - (250, 0, 0)).max() < 12


# ---------------------------------------------------------------------- decided by opening
def test_format_is_decided_by_opening_not_by_extension(tmp_path):
    rgb = _rgb(16, 16)
    for name in ("UPPER.PNG", "really_png.jpg", "really_png.dat", "no_extension"):
        _save(rgb, tmp_path / name, fmt="PNG")
        assert np.array_equal(load_pixels(tmp_path / name), rgb), name
    files, skipped = list_images(tmp_path)
    assert sorted(p.name for p in files) == sorted(["UPPER.PNG", "really_png.jpg", "really_png.dat", "no_extension"])
    assert skipped == []


def test_broken_files_raise_with_a_reason(tmp_path):
    (tmp_path / "noise.png").write_bytes(os.urandom(300))
    with pytest.raises(ImageError, match="not an image"):
        read_image(tmp_path / "noise.png", 32, 3)
    buf = tmp_path / "ok.png"
    _save(_rgb(64, 64), buf)
    data = buf.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="unreadable"):
        read_image(tmp_path / "truncated.png", 32, 3)
    with pytest.raises(ImageError, match="unreadable"):
        read_image(tmp_path / "missing.png", 32, 3)


def test_listing_skips_links_duplicates_and_text_with_reasons(tmp_path):
    folder = tmp_path / "imgs"
    _save(_rgb(8, 8), folder / "a.png")
    _save(_rgb(8, 8), folder / "sub" / "b.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored silently
    os.symlink(folder / "a.png", folder / "a_link.png")  # a second path to a.png
    os.symlink(tmp_path / "gone.png", folder / "broken.png")
    os.symlink(folder / "loop1.png", folder / "loop2.png")
    os.symlink(folder / "loop2.png", folder / "loop1.png")
    os.symlink(folder / "sub", folder / "sub_link")  # a folder reached twice
    os.symlink(folder, folder / "sub" / "parent")  # a folder loop
    files, skipped = list_images(folder)
    assert [p.relative_to(folder).as_posix() for p in files] == ["a.png", "sub/b.png"]
    reasons = {os.path.relpath(s["file"], folder): s["reason"] for s in skipped}
    assert reasons["notes.txt"].startswith("not an image")
    assert reasons["broken.png"].startswith("broken symlink")
    assert reasons["loop1.png"].startswith("looping symlink") and reasons["loop2.png"].startswith("looping symlink")
    assert reasons["a_link.png"].startswith("duplicate") and "a.png" in reasons["a_link.png"]
    assert reasons["sub_link"].startswith("duplicate") and reasons["sub/parent"].startswith("duplicate")
    assert len(skipped) == 7  # .DS_Store is not listed


def test_a_file_seen_in_an_earlier_folder_is_a_duplicate(tmp_path):
    _save(_rgb(8, 8), tmp_path / "one" / "a.png")
    (tmp_path / "two").mkdir()
    os.symlink(tmp_path / "one" / "a.png", tmp_path / "two" / "same.png")
    seen = {}
    assert len(list_images(tmp_path / "one", seen)[0]) == 1
    files, skipped = list_images(tmp_path / "two", seen)
    assert files == [] and skipped[0]["reason"].startswith("duplicate")
    assert len(list_images(tmp_path / "two")[0]) == 1  # without the shared record it is a file


# ---------------------------------------------------------------------- resize policies
def _wide(tmp_path):
    """48 columns x 32 rows: column x holds 5 * x in every channel (0 .. 235)."""
    image = np.repeat((np.arange(48) * 5).astype(np.uint8)[None, :, None], 32, axis=0).repeat(3, axis=2)
    return image, _save(image, tmp_path / "wide.png")


def test_crop_keeps_the_centre_columns(tmp_path):
    image, path = _wide(tmp_path)
    got = read_image(path, 32, 3, resize="crop")
    assert got.shape == (3, 32, 32)
    assert torch.equal(got, torch.from_numpy(image[:, 8:40]).permute(2, 0, 1))  # columns 8..39
    tall = np.ascontiguousarray(image.transpose(1, 0, 2))  # 48 rows x 32 columns
    assert np.array_equal(make_square(tall, "crop"), tall[8:40])


def test_pad_centres_the_image_on_a_black_square(tmp_path):
    image, path = _wide(tmp_path)
    got = read_image(path, 48, 3, resize="pad")  # 48 px: no resize, so exact
    assert got.shape == (3, 48, 48)
    assert PAD_FILL == 0 and (got[:, :8] == 0).all() and (got[:, 40:] == 0).all()  # documented: black
    assert torch.equal(got[:, 8:40], torch.from_numpy(image).permute(2, 0, 1))
    small = read_image(path, 32, 3, resize="pad")
    assert small.shape == (3, 32, 32) and (small[:, :4] == 0).all() and small[:, 16].max() > 200


def test_stretch_keeps_the_whole_width(tmp_path):
    image, path = _wide(tmp_path)
    got = read_image(path, 32, 3)  # the default policy
    assert got.shape == (3, 32, 32)
    row = got[0, 16].int()
    assert row[0] < 10 and row[-1] > 225 and (row.diff() >= 0).all()  # 0..235 squeezed into 32 columns
    assert (got == got[:, :1]).all()  # every row the same, as in the file
    assert torch.equal(read_image(path, 32, 3, resize="stretch"), got)
    assert not torch.equal(read_image(path, 32, 3, resize="crop"), got)


def test_square_images_are_the_same_under_every_policy(tmp_path):
    path = _save(_rgb(40, 40), tmp_path / "sq.png")
    results = [read_image(path, 32, 3, resize=r) for r in ("stretch", "crop", "pad")]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    assert torch.equal(results[0], to_model_input(load_pixels(path), 32, 3))


def test_an_unknown_policy_names_the_key(tmp_path):
    path = _save(_rgb(8, 8), tmp_path / "x.png")
    with pytest.raises(DataError, match="data.resize='squash'"):
        read_image(path, 32, 3, resize="squash")


# ---------------------------------------------------------------------- big images: bounded memory, named warnings
def _block_mean(pixels, k):
    h, w = pixels.shape[0] // k * k, pixels.shape[1] // k * k
    return pixels[:h, :w].reshape(h // k, k, w // k, k, -1).astype(np.float64).mean((1, 3))


def _gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], axis=2).astype(np.uint8)


def test_a_big_jpeg_is_decoded_at_a_reduced_scale_never_in_full(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    import anogan.data.reading as reading

    monkeypatch.setattr(reading, "MAX_DECODE_PIXELS", 64 * 64)
    pixels = _gradient(256, 256)
    path = _save(pixels, tmp_path / "big.jpg", quality=95)
    requested, draft = [], JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        requested.append(size)
        return draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = load_pixels(path)
    assert requested == [(64, 64)] and out.shape == (64, 64, 3)  # decoded at 1/4 scale by libjpeg
    assert np.abs(out - _block_mean(pixels, 4)).max() <= 8  # the same picture (JPEG error only)
    assert read_image(path, 32, 3).shape == (3, 32, 32)


def test_a_big_png_is_box_reduced_and_a_palette_by_its_colours(tmp_path, monkeypatch):
    import anogan.data.reading as reading

    monkeypatch.setattr(reading, "MAX_DECODE_PIXELS", 64 * 64)
    pixels = _gradient(200, 300)
    out = load_pixels(_save(pixels, tmp_path / "big.png"))
    assert out.shape == (50, 75, 3) and np.abs(out - _block_mean(pixels, 4)).max() <= 1  # factor 4: 75 x 50 <= 4096
    checker = (np.indices((256, 256)).sum(0) % 2).astype(np.uint8)  # palette indices 0 / 1, alternating
    img = Image.fromarray(checker, mode="P")
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.save(tmp_path / "palette.png")
    out = load_pixels(tmp_path / "palette.png")
    assert out.shape == (64, 64, 3) and np.abs(out.astype(int) - [128, 0, 128]).max() <= 1  # red + blue, not index 0 or 1


def test_a_big_image_keeps_its_exif_orientation(tmp_path, monkeypatch):
    import anogan.data.reading as reading

    pixels = _gradient(128, 256)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "turned.png"
    Image.fromarray(pixels).save(path, exif=exif)
    full = load_pixels(path)
    monkeypatch.setattr(reading, "MAX_DECODE_PIXELS", 32 * 32)
    small = load_pixels(path)  # reduced 6x as stored (22 x 43, last boxes partial), then turned upright
    assert (full == np.rot90(pixels, -1)).all() and small.shape == (43, 22, 3)
    assert np.abs(small[:42, 1:] - np.rot90(_block_mean(pixels, 6), -1)).max() <= 1  # full boxes


def test_pillow_warnings_while_reading_name_the_file(tmp_path, monkeypatch, caplog):
    import logging
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 40 = 1600: above the warning limit, below the error (2000)
    path = _save(_rgb(40, 40), tmp_path / "bomb.png")
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.WARNING, logger="anogan.data.images"):
        warnings.simplefilter("always")
        assert load_pixels(path).shape == (40, 40, 3)
    assert not escaped  # Pillow's raw warning (naming no file) does not reach the user
    assert f"{path}: Image size (1600 pixels) exceeds limit" in caplog.text and "DecompressionBombWarning" in caplog.text


def test_check_resize_refuses_with_the_configs_rule_and_words():
    """A policy given from Python is refused with the same line as data.resize in a config."""
    with pytest.raises(DataError) as caught:
        check_resize("squash")
    assert str(caught.value) == config_refusal(["data=folder", "data.resize=squash"], "data")
    assert check_resize("pad") == "pad"
