"""Reading your own image files: the one reader used by training, evaluation and ``predict.py``.

Which files (``list_images``)
    Every regular file under a folder (recursively, symlinked folders followed once) is a candidate;
    whether it is an image is decided by opening it with Pillow, not by its extension (a PNG named
    ``.dat`` is read; ``.PNG`` and ``.png`` are the same). Not candidates:

    * hidden files and folders (name starting with ``.``, e.g. ``.DS_Store``): ignored silently;
    * text and metadata files by extension (``NOT_IMAGE_SUFFIXES``: ``.txt``, ``.json``, ``.csv``, ...):
      skipped with reason "not an image";
    * broken symlinks, looping symlinks, files that cannot be stat'ed: skipped with the reason;
    * a second path to a file already listed (a symlink or hard link to it, a folder reached twice):
      skipped as a duplicate; the real path is preferred over the symlink.

How pixels are read (``read_pixels``; ``load_pixels`` without the notes)
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

Non-square images (``make_square``, the ``data.resize`` policy)
    * ``stretch`` (default, as anomalib): the whole image is resized to size x size (aspect changes);
    * ``crop``: the centred square of side min(H, W) is kept (top/left offset ``(H - side) // 2``,
      ``(W - side) // 2``), then resized;
    * ``pad``: the image is centred on a black (``PAD_FILL`` = 0) square of side max(H, W) (offset
      ``(side - H) // 2``, ``(side - W) // 2``), then resized.

Then ``to_model_input`` gives the model its input: channels converted to the model's, and resized
to size x size. Downscaling by whole factors (each side of the squared image a multiple of the size)
averages each block of factor x factor pixels (``downscale="area"``: the least lossy resize, a 2x
nearest-neighbour copy comes back exactly); any other size is resized bilinear, antialiased
(``"bilinear"``, the only rule of scorer files written before ``area`` existed). ``model_input_notes``
says what this did to an input of a given shape.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
import warnings
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from anogan.config.choices import ALPHA_RULES, RESIZE_POLICIES
from anogan.data.duplicates import pixel_digest
from anogan.data.notes import Note
from anogan.utils.errors import DataError, ImageError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from PIL import Image

LOW_16_BIT = 65536 // 16  # 16-bit images whose values all lie under this are noted (kept as stored)
# Larger images are read reduced by an integer factor (bounded memory; the model sees <= 128 px).
MAX_DECODE_PIXELS = 4096 * 4096
EXIF_ORIENTATION = 0x0112
PAD_FILL = 0  # the value of the border that ``pad`` adds (black), in every channel
# Files skipped by name: text and metadata that often sit beside images. Everything else is opened.
NOT_IMAGE_SUFFIXES = frozenset(
    {
        ".txt",
        ".json",
        ".jsonl",
        ".csv",
        ".tsv",
        ".md",
        ".rst",
        ".yaml",
        ".yml",
        ".xml",
        ".html",
        ".htm",
        ".log",
        ".ini",
        ".cfg",
        ".toml",
        ".py",
        ".ipynb",
        ".sh",
        ".pdf",
        ".zip",
        ".gz",
        ".tar",
        ".npy",
        ".npz",
        ".pt",
        ".pth",
        ".ckpt",
        ".pkl",
    }
)
GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def check_alpha(alpha: str) -> str:
    """``alpha`` if it is a known rule, else ``DataError`` naming ``data.alpha`` and the choices."""
    if alpha not in ALPHA_RULES:
        raise DataError(f"data.alpha={alpha!r} is not a rule: use one of {', '.join(ALPHA_RULES)}.")
    return alpha


def check_resize(resize: str) -> str:
    """``resize`` if it is a known policy, else ``DataError`` naming ``data.resize`` and the choices."""
    if resize not in RESIZE_POLICIES:
        raise DataError(f"data.resize={resize!r} is not a policy: use one of {', '.join(RESIZE_POLICIES)}.")
    return resize


# ---------------------------------------------------------------------- listing files
def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _stat_problem(path: Path, err: OSError) -> str:
    if path.is_symlink():
        if err.errno == errno.ELOOP:
            return "looping symlink (it points back to itself)"
        return f"broken symlink (its target {os.readlink(path)} does not exist)"
    return f"cannot be read ({err.strerror or err})"


def list_images(folder: str | Path, seen: dict | None = None) -> tuple[list[Path], list[dict]]:
    """Candidate image files under ``folder`` (recursively) and the entries skipped while listing.

    Returns ``(files, skipped)``: ``files`` sorted paths (each file once), ``skipped`` a list of
    ``{"file": str, "reason": str}`` for broken/looping symlinks, duplicates (the same file reached by
    a second path: symlink, hard link, folder linked twice) and files named like text/metadata
    (``NOT_IMAGE_SUFFIXES``). Hidden entries (``.name``) are ignored silently. Whether a candidate is
    a readable image is decided later by ``read_image``.

    ``seen`` (optional, updated in place) maps a file's identity to the path it was listed under:
    pass the same dict for several folders to count a file shared between them once.
    """
    folder = Path(folder)
    seen = {} if seen is None else seen
    skipped: list[dict] = []
    candidates: list[tuple[Path, os.stat_result]] = []
    visited: set[tuple[int, int]] = set()
    real_dirs, linked_dirs = deque([folder]), deque[Path]()  # real folders first: their paths are preferred
    while real_dirs or linked_dirs:
        current = real_dirs.popleft() if real_dirs else linked_dirs.popleft()
        try:
            key = _identity(current.stat())
        except OSError as err:
            skipped.append({"file": str(current), "reason": _stat_problem(current, err)})
            continue
        if key in visited:
            skipped.append({"file": str(current), "reason": "duplicate (a folder already searched under another path)"})
            continue
        visited.add(key)
        try:
            entries = sorted(current.iterdir())
        except OSError as err:
            skipped.append({"file": str(current), "reason": f"folder cannot be listed ({err.strerror or err})"})
            continue
        for path in entries:
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()  # follows symlinks
            except OSError as err:
                skipped.append({"file": str(path), "reason": _stat_problem(path, err)})
                continue
            if stat.S_ISDIR(st.st_mode):
                (linked_dirs if path.is_symlink() else real_dirs).append(path)
            elif not stat.S_ISREG(st.st_mode):
                skipped.append({"file": str(path), "reason": "not a regular file"})
            elif path.suffix.lower() in NOT_IMAGE_SUFFIXES:
                skipped.append({"file": str(path), "reason": f"not an image ({path.suffix} file)"})
            else:
                candidates.append((path, st))
    files = []
    for path, st in sorted(candidates, key=lambda c: (c[0].is_symlink(), str(c[0]))):
        key = _identity(st)
        if key in seen:
            skipped.append({"file": str(path), "reason": f"duplicate (the same file as {seen[key]})"})
        else:
            seen[key] = path
            files.append(path)
    return sorted(files), skipped


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


def make_square(pixels: np.ndarray, resize: str = "stretch") -> np.ndarray:
    """uint8 H×W×C -> the array ``to_model_input`` resizes: unchanged for ``stretch`` (H×W×C),
    the centred min(H, W) square for ``crop``, the image centred on a max(H, W) square filled with
    ``PAD_FILL`` for ``pad``. Raises ``DataError`` for an unknown policy."""
    check_resize(resize)
    h, w = pixels.shape[:2]
    if resize == "stretch" or h == w:
        return pixels
    if resize == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return pixels[top : top + side, left : left + side]
    side = max(h, w)
    out = np.full((side, side, pixels.shape[2]), PAD_FILL, dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = pixels
    return out


def area_factors(height: int, width: int, image_size: int) -> tuple[int, int] | None:
    """The whole factors (rows, columns) that take an H×W image to ``image_size`` square by block
    averaging, or None where a side is not a multiple of ``image_size`` (or nothing shrinks)."""
    if height % image_size or width % image_size or (height, width) == (image_size, image_size):
        return None
    return height // image_size, width // image_size


def to_model_input(image_hwc: np.ndarray, image_size: int, channels: int, downscale: str = "area") -> torch.Tensor:
    """uint8 H×W×C (C = 1 or 3) -> uint8 channels×size×size: ITU-R 601-2 luma for grey models,
    grey copied to 3 channels for colour models, then resized to size×size whatever H and W are:
    ``downscale="area"`` averages each block where both sides are whole multiples of the size
    (``area_factors``: ``avg_pool2d``, rounded), anything else (and every resize under
    ``"bilinear"``) is bilinear antialiased, as the CIFAR-10 module upsamples; rounded back to uint8."""
    image = torch.from_numpy(np.array(image_hwc, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].contiguous()
    if channels == 1 and image.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        image = (image.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif channels == 3 and image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1).contiguous()
    height, width = image.shape[-2:]
    if (height, width) != (image_size, image_size):
        factors = area_factors(height, width, image_size) if downscale == "area" else None
        if factors is not None:
            resized = F.avg_pool2d(image.float(), kernel_size=factors)
        else:
            resized = F.interpolate(
                image.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
            )
        image = resized.round().clamp(0, 255).to(torch.uint8)
    return image[0]


def model_input_notes(
    shape: tuple[int, ...], image_size: int, channels: int, resize: str = "stretch", downscale: str = "area"
) -> list[Note]:
    """What ``make_square`` and ``to_model_input`` do to pixels of ``shape`` (H×W×C), as notes: the
    channels converted, and a resize from another size or aspect (the original W×H, the policy, the
    method)."""
    height, width, have = int(shape[0]), int(shape[1]), int(shape[2])
    notes = []
    if channels == 3 and have == 1:
        notes.append(Note("channels", "grey copied to 3 channels (the model is colour)"))
    elif channels == 1 and have == 3:
        notes.append(Note("channels", "colour turned grey (ITU-R 601-2 luma; the model is grey)"))
    if (height, width) == (image_size, image_size):
        return notes
    side = height if resize == "stretch" or height == width else (min if resize == "crop" else max)(height, width)
    square = (height, width) if resize == "stretch" else (side, side)
    steps = []
    if height != width:
        steps.append(
            {
                "stretch": "stretched to a square",
                "crop": f"centred {side}×{side} kept",
                "pad": f"padded with black to {side}×{side}",
            }[resize]
        )
    factors = area_factors(*square, image_size) if downscale == "area" else None
    if factors is not None:
        steps.append(f"{factors[0]}×{factors[1]} area average" if factors[0] != factors[1] else f"{factors[0]}× area average")
    else:
        steps.append("bilinear, antialiased")
    what = f"resized from {width}×{height} to {image_size}×{image_size} ({', '.join(steps)})"
    return [*notes, Note("resized", what)]


def read_image(
    path: str | Path, image_size: int, channels: int, resize: str = "stretch", alpha: str = "black", downscale: str = "area"
) -> torch.Tensor:
    """An image file as the model's input: uint8 tensor channels×image_size×image_size.

    ``read_pixels`` (first frame, EXIF orientation, bit depth, the ``alpha`` rule), then
    ``make_square`` (``resize``: stretch | crop | pad), then ``to_model_input`` (grey/colour, resize
    by ``downscale``). Raises ``ImageError`` (the reason) when the file cannot be used,
    ``DataError`` for an unknown ``resize``.
    """
    check_resize(resize)
    return to_model_input(make_square(load_pixels(path, alpha), resize), image_size, channels, downscale)


def read_images(
    paths: list[Path], image_size: int, channels: int, resize: str = "stretch", alpha: str = "black"
) -> tuple[list[Path], list[torch.Tensor], list[bytes], list[dict], list[list[Note]]]:
    """Each of ``paths`` read as ``read_image`` does (``downscale="area"``), with the ``pixel_digest``
    of its decoded pixels (for ``anogan.data.duplicates``) and its notes (``read_pixels`` and
    ``model_input_notes``). Returns ``(paths read, images, digests, skipped, notes)``: a file that
    cannot be used is a ``{"file", "reason"}`` entry of ``skipped`` and the others go on."""
    check_resize(resize)
    kept, images, digests, skipped, notes = [], [], [], [], []
    for path in paths:
        try:
            pixels, read_notes = read_pixels(path, alpha)
        except ImageError as err:
            skipped.append({"file": str(path), "reason": str(err)})
            continue
        kept.append(path)
        digests.append(pixel_digest(pixels))
        images.append(to_model_input(make_square(pixels, resize), image_size, channels))
        notes.append(read_notes + model_input_notes(pixels.shape, image_size, channels, resize))
    return kept, images, digests, skipped, notes


# ---------------------------------------------------------------------- masks
def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize of a uint8 {0,1} mask (1×h×w or N×1×h×w) to ``height``×``width``,
    pixel centres aligned (``nearest-exact``, as PIL's NEAREST): no value other than 0 and 1 appears."""
    if tuple(mask.shape[-2:]) == (height, width):
        return mask
    batch = mask[None] if mask.dim() == 3 else mask
    out = F.interpolate(batch.float(), size=(height, width), mode="nearest-exact").to(torch.uint8)
    return out[0] if mask.dim() == 3 else out


def read_mask(mask_path: Path, image_path: Path, image_size: int, resize: str = "stretch") -> torch.Tensor:
    """The ground-truth mask of ``image_path`` as uint8 {0,1}, 1×``image_size``×``image_size``.

    Foreground: pixel > 0 for 0/1 masks, ≥ 128 for 0/255 masks (MVTec AD's; robust to JPEG noise).
    A mask of another size than its image is first resized to the image's size, then to the model
    size, both nearest-neighbour, after the image's ``resize`` policy (stretch; crop: the centred
    square; pad: a border of 0 = normal, see ``make_square``), so mask pixels stay
    on the image pixels they mark. Raises ``DataError`` naming the file when the
    mask cannot be read.
    """
    from PIL import Image

    try:
        with Image.open(mask_path) as img:
            data = np.asarray(img.convert("L"), dtype=np.uint8)
        with Image.open(image_path) as img:
            width, height = img.size  # header only
    except Exception as err:  # PIL raises many kinds for broken files
        raise DataError(
            f"mask {mask_path} cannot be read ({type(err).__name__}: {err}). Fix: replace it with a PNG mask."
        ) from None
    mask = torch.from_numpy((data >= (1 if data.max() <= 1 else 128)).astype(np.uint8))[None]
    mask = resize_mask(mask, height, width)
    if resize != "stretch":
        mask = torch.from_numpy(make_square(mask.permute(1, 2, 0).numpy(), resize)).permute(2, 0, 1).contiguous()
    return resize_mask(mask, image_size, image_size)
