"""How pixels are read: an image file, a Pillow image or a numpy array as uint8 H×W×C, the one set of
rules used by training, evaluation and ``predict.py`` (``read_pixels``; ``load_pixels`` without the notes).

Whatever the reader has to interpret is returned as a ``Note`` (``anogan.data.notes``) beside
the pixels, so that every consumer can say it once per input.

* first frame of multi-page (TIFF) and animated (GIF, WEBP, APNG) files (a note: frames dropped);
* EXIF orientation applied (``ImageOps.exif_transpose``), so a phone photo stands upright;
* grey modes (``1``, ``L``, ``LA``, ``I;16*``, ``I``, ``F``) give 1 channel, everything else 3 (RGB);
* 8-bit data is used as is; 16-bit (``I;16``, ``I;16L``, ``I;16B``) is scaled by its bit depth:
  ``round(v * 255 / 65535)`` (65535 -> 255, 32768 -> 128; a gradient stays a gradient, nothing is
  clipped). Values all under ``LOW_16_BIT`` (1/16 of the range) are kept as stored, with a note.
  16-bit colour PNGs are read by Pillow as 8-bit RGB (high byte);
* 32-bit integer ``I``: if every value lies in [0, 65535] it is taken as 16-bit data (as above);
  otherwise it is min-max scaled to [0, 255] per image (a note);
* 32-bit float ``F``: the rule of float arrays (``pixels_from_array``): values in [0, 1] are
  intensity, ``round(v * 255)`` (a note: the range is assumed); any value outside [0, 1], NaN or
  infinity makes the file unusable (skipped, the fix in the reason);
* alpha (``LA``, ``RGBA``, ``PA``, palette or grey/RGB with a transparent colour) is flattened by
  the ``alpha`` rule (``data.alpha``): ``black``: ``round(value * alpha / 255)``; ``white``:
  ``round((value * alpha + 255 * (255 - alpha)) / 255)``; ``refuse``: a file with any pixel not
  fully opaque is unusable. A note says how many pixels were not opaque; a fully opaque alpha
  channel changes nothing and is not noted;
* palette (``P``) images are expanded to RGB; CMYK / YCbCr are converted to RGB by Pillow.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from anogan.config.data_schema import ALPHA_RULE
from anogan.config.fields import check
from anogan.data.notes import Note
from anogan.utils.errors import DataError, ImageError

# The reader's lines keep the logger name ``anogan.data.images`` (run logs and tests filter on it).
log = logging.getLogger("anogan.data.images")

if TYPE_CHECKING:
    from PIL import Image

LOW_16_BIT = 65536 // 16  # 16-bit images whose values all lie under this are noted (kept as stored)
# Larger images are read reduced by an integer factor (bounded memory; the model sees <= 128 px).
MAX_DECODE_PIXELS = 4096 * 4096
EXIF_ORIENTATION = 0x0112
GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def check_alpha(alpha: str) -> str:
    """``alpha`` if the config's ``data.alpha`` rule allows it, else ``DataError`` with that rule's
    one line (``data.alpha=<value>: use one of ...``)."""
    check("data.alpha", alpha, ALPHA_RULE, DataError)
    return alpha


# ---------------------------------------------------------------------- decoding
def _scale(values: np.ndarray, top: float) -> np.ndarray:
    return np.rint(values.astype(np.float64) * (255.0 / top)).clip(0, 255).astype(np.uint8)


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, np.uint8)
    return _scale(values.astype(np.float64) - low, high - low)


def _flatten(colour: np.ndarray, alpha: np.ndarray, rule: str) -> tuple[np.ndarray, list[Note]]:
    """``colour`` (uint8 H×W×C) flattened by its ``alpha`` (uint8 H×W) on black or white (module
    docstring); ``ImageError`` for ``refuse`` when any pixel is not fully opaque."""
    see_through = alpha < 255
    if not see_through.any():
        return colour, []
    share = f"{100 * float(see_through.mean()):.3g}% of pixels not opaque"
    if rule == "refuse":
        raise ImageError(
            f"transparent pixels ({share}; data.alpha=refuse): flatten the image yourself, or use data.alpha=black or white"
        )
    a = alpha.astype(np.float64)[..., None]
    background = 255.0 * (255.0 - a) if rule == "white" else 0.0
    out = np.rint((colour.astype(np.float64) * a + background) / 255.0).astype(np.uint8)
    return out, [Note("transparency", f"transparency flattened on {rule} ({share})")]


def _from_16_bit(values: np.ndarray) -> tuple[np.ndarray, list[Note]]:
    """16-bit data scaled by its depth, with a note when every value lies under ``LOW_16_BIT``."""
    top = int(values.max()) if values.size else 0
    notes = []
    if top < LOW_16_BIT:
        notes.append(
            Note(
                "low 16-bit range",
                f"16-bit values only reach {top} of 65535 (under 1/16 of the range): kept as stored (÷ 65535: dark)",
            )
        )
    return _scale(values, 65535)[..., None], notes


def float_range_reason(low: float, high: float, fix: str) -> str:
    """The reason a float image outside [0, 1] is refused; [-1, 1] data gets the hint ``(x + 1) / 2``."""
    if low >= -1.0 and high <= 1.0:
        fix = "for data in [-1, 1] use (x + 1) / 2"
    return f"float pixels outside [0, 1] (they span [{low:.4g}, {high:.4g}]): {fix}"


def _to_uint8(img: Image.Image, alpha: str = "black") -> tuple[np.ndarray, list[Note]]:
    """A loaded Pillow image as uint8 H×W×C (C = 1 for grey modes, else 3), by the module's rules,
    with the notes of what was interpreted."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _from_16_bit(np.asarray(img))
    if mode == "I":
        values = np.asarray(img)
        if not values.size or (values.min() >= 0 and values.max() <= 65535):
            return _from_16_bit(values)
        span = f"{int(values.min())}..{int(values.max())}"
        note = Note("32-bit range", f"32-bit integer values {span} min-max scaled to 0..255 (absolute brightness lost)")
        return _min_max(values)[..., None], [note]
    if mode == "F":
        values = np.asarray(img)
        if not np.isfinite(values).all():
            raise ImageError("unreadable (float image with NaN or infinite pixel values)")
        lowest, highest = float(values.min()), float(values.max())
        if lowest < 0.0 or highest > 1.0:
            raise ImageError(float_range_reason(lowest, highest, "save the values divided by 255 (or as 8- or 16-bit integers)"))
        return _scale(values, 1.0)[..., None], [Note("float range", "float pixels taken as intensity in [0, 1] (× 255)")]
    has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info
    if mode in ("1", "L", "LA", "La"):
        if not has_alpha:
            return np.asarray(img.convert("L"))[..., None], []
        grey_alpha = np.asarray(img.convert("LA"))
        return _flatten(grey_alpha[..., :1], grey_alpha[..., 1], alpha)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"))
        return _flatten(rgba[..., :3], rgba[..., 3], alpha)
    return np.asarray(img.convert("RGB")), []


def _reduce_factor(width: int, height: int) -> int:
    """The smallest integer f with ``ceil(width / f) * ceil(height / f) <= MAX_DECODE_PIXELS`` (1: no
    reduction); ``Image.reduce`` keeps a partial last box, hence the ceilings."""
    f = max(1, math.ceil(math.sqrt(width * height / MAX_DECODE_PIXELS)))
    while -(-width // f) * -(-height // f) > MAX_DECODE_PIXELS:
        f += 1
    return f


def _reduced(img: Image.Image, factor: int) -> Image.Image:
    """``img`` (loaded) box-averaged by ``factor`` with Pillow's ``reduce``, after turning the modes
    whose values must not be averaged as stored (palette indices, 1-bit, a transparent colour key)
    or that ``reduce`` refuses (16-bit) into RGBA / LA / L / I; EXIF orientation applied after."""
    from PIL import Image

    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    if img.mode in ("P", "PA") or ("transparency" in img.info and img.mode not in ("1", "L")):
        img = img.convert("RGBA")
    elif "transparency" in img.info:
        img = img.convert("LA")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    img = img.reduce(factor)
    img.info.pop("transparency", None)
    t = Image.Transpose  # as ImageOps.exif_transpose
    method = {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270, 7: t.TRANSVERSE}
    method[8] = t.ROTATE_90
    return img.transpose(method[orientation]) if orientation in method else img


def _upright_pixels(img: Image.Image, alpha: str) -> tuple[np.ndarray, list[Note]]:
    """A loaded Pillow image (its first frame) as uint8 H×W×C: reduced when above
    ``MAX_DECODE_PIXELS`` (``_reduced``), EXIF orientation applied, then ``_to_uint8``; with the notes
    (frames dropped first)."""
    from PIL import ImageOps

    frames = int(getattr(img, "n_frames", 1) or 1)
    factor = _reduce_factor(*img.size)
    pixels, notes = _to_uint8(_reduced(img, factor) if factor > 1 else ImageOps.exif_transpose(img), alpha)
    if frames > 1:
        notes = [Note("frames", f"first of {frames} frames used"), *notes]
    return pixels, notes


def read_pixels(path: str | Path | BinaryIO, alpha: str = "black") -> tuple[np.ndarray, list[Note]]:
    """The first frame of an image file (a path, or a binary file object) as uint8 H×W×C (C = 1 grey
    or 3 colour), EXIF orientation applied, bit depth and alpha (the ``alpha`` rule) handled as the
    module docstring says, with the notes of what was interpreted (``anogan.data.notes``). Raises
    ``ImageError`` (the reason) when Pillow cannot open or decode the file, or its pixels cannot be
    used (floats outside [0, 1], transparency under ``alpha="refuse"``).

    Memory is bounded: an image of more than ``MAX_DECODE_PIXELS`` pixels is read reduced by the
    smallest integer factor that brings it under the limit (JPEG: decoded at 1/2, 1/4 or 1/8 scale
    by ``Image.draft``, never in full; other formats: decoded once, then box-averaged by
    ``Image.reduce`` before any copy). Any warning Pillow raises while reading (e.g. its
    decompression-bomb warning) is logged naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as img:
                img.seek(0)
                factor = _reduce_factor(*img.size)
                if factor > 1 and img.format == "JPEG":
                    scale = min(8, 1 << (factor - 1).bit_length())  # draft scales: 1/2, 1/4, 1/8
                    img.draft(img.mode, (-(-img.width // scale), -(-img.height // scale)))
                img.load()
                pixels, notes = _upright_pixels(img, alpha)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError("not an image (Pillow cannot identify the file)") from None
        except Image.DecompressionBombError as err:
            raise ImageError(f"unreadable (too large to read safely: {err})") from None
        except Exception as err:  # Pillow raises many kinds for truncated or corrupt files
            raise ImageError(f"unreadable ({type(err).__name__}: {err})") from None
        finally:
            for w in caught:
                log.warning("%s: %s (%s)", path, w.message, w.category.__name__)
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageError("unreadable (empty image: 0 pixels)")
    return np.ascontiguousarray(pixels), notes


def load_pixels(path: str | Path | BinaryIO, alpha: str = "black") -> np.ndarray:
    """``read_pixels`` without the notes: the pixels only."""
    return read_pixels(path, alpha)[0]


def read_pil(img: Image.Image, alpha: str = "black") -> tuple[np.ndarray, list[Note]]:
    """A Pillow image made or opened in memory as uint8 H×W×C by the same steps as a file
    (``read_pixels``): first frame, reduced above ``MAX_DECODE_PIXELS``, EXIF orientation, bit depth,
    the ``alpha`` rule; with the notes. Raises ``ImageError`` (the reason) for an image that cannot be
    decoded or used, or has no pixels."""
    try:
        img.seek(0)
        img.load()
        pixels, notes = _upright_pixels(img, alpha)
    except ImageError:
        raise
    except Exception as err:  # Pillow raises many kinds for truncated or corrupt data
        raise ImageError(f"unreadable ({type(err).__name__}: {err})") from None
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageError("unreadable (empty image: 0 pixels)")
    return np.ascontiguousarray(pixels), notes


def pixels_from_pil(img: Image.Image, alpha: str = "black") -> np.ndarray:
    """``read_pil`` without the notes: the pixels only."""
    return read_pil(img, alpha)[0]


def read_array(array: np.ndarray, alpha: str = "black") -> tuple[np.ndarray, list[Note]]:
    """An in-memory image (numpy H×W or H×W×C, channels last, C = 1 grey, 2 grey + alpha, 3 RGB,
    4 RGBA) as uint8 H×W×C (C = 1 or 3), by the rules a file of that depth gets (module docstring),
    with the notes:

    * uint8: used as is;
    * uint16: 16-bit data, ``round(v * 255 / 65535)`` (noted when under ``LOW_16_BIT``, as a file);
    * float (16/32/64-bit): intensity in **[0, 1]**, ``round(v * 255)`` (the documented meaning of a
      float array: not noted); outside [0, 1] refused (brightness would be lost silently), with the
      fix: divide 8-bit values by 255, or ``(x + 1) / 2`` for [-1, 1] data;
    * alpha (C = 2 or 4) is flattened by the ``alpha`` rule, as for a file.

    Raises ``ImageError`` (the reason) for another dtype or shape (the shape as given, and the
    layout expected), NaN/inf or out-of-range floats, or an image with no pixels."""
    array = np.asarray(array)
    given = tuple(array.shape)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        channels_first = array.ndim == 3 and array.shape[0] in (1, 2, 3, 4)
        hint = ": a C×H×W array is array.transpose(1, 2, 0)" if channels_first else ""
        raise ImageError(
            f"an array of shape {given} is not an image: numpy images are H×W or H×W×C (channels last) "
            f"with C = 1, 2, 3 or 4{hint}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError("empty image: 0 pixels")
    notes: list[Note] = []
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels, notes = _from_16_bit(array)
        pixels = pixels[..., 0]
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("float image with NaN or infinite pixel values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(float_range_reason(low, high, "divide 8-bit values by 255, or pass them as uint8"))
        pixels = _scale(array, 1.0)
    else:
        raise ImageError(f"pixels of dtype {array.dtype} are not supported: use uint8, uint16 or float in [0, 1]")
    if pixels.shape[2] in (2, 4):
        pixels, alpha_notes = _flatten(pixels[..., :-1], pixels[..., -1], alpha)
        notes += alpha_notes
    return np.ascontiguousarray(pixels), notes


def pixels_from_array(array: np.ndarray, alpha: str = "black") -> np.ndarray:
    """``read_array`` without the notes: the pixels only."""
    return read_array(array, alpha)[0]
