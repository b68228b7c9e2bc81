"""Pixels as the model's input: squaring (``make_square``), resizing to the model's size and channels
(``to_model_input``), image files read and prepared at once (``read_image``, ``read_images``) and
ground-truth masks (``read_mask``), as training, evaluation and ``predict.py`` all use them.

Which files are candidates is ``anogan.data.listing`` (``list_images``); how a file's pixels are read
(formats, bit depths, EXIF, alpha) is ``anogan.data.reading`` (``read_pixels``).

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

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anogan.config.data_schema import RESIZE_RULE
from anogan.config.fields import check
from anogan.data.duplicates import pixel_digest
from anogan.data.notes import Note
from anogan.data.reading import (
    load_pixels,
    read_pixels,
)
from anogan.utils.errors import DataError, ImageError

__all__ = [
    "PAD_FILL",
    "area_factors",
    "check_resize",
    "make_square",
    "model_input_notes",
    "read_image",
    "read_images",
    "read_mask",
    "resize_mask",
    "to_model_input",
]

PAD_FILL = 0  # the value of the border that ``pad`` adds (black), in every channel


def check_resize(resize: str) -> str:
    """``resize`` if the config's ``data.resize`` rule allows it, else ``DataError`` with that rule's
    one line (``data.resize=<value>: use one of ...``)."""
    check("data.resize", resize, RESIZE_RULE, DataError)
    return resize


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
