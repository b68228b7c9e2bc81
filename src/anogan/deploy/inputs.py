"""Inputs of ``Detector.predict`` as pixels: paths, folders, PIL images, numpy arrays and tensors,
each read by the rules of ``anogan.data.reading`` into a uint8 H×W×C array with its reading notes
(``anogan.data.notes``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anogan.data import notes as read_notes
from anogan.data.listing import list_images
from anogan.data.reading import read_array, read_pil, read_pixels
from anogan.utils.errors import ImageError, InputError

ImageInput = str | Path | np.ndarray | torch.Tensor | Any  # Any: a PIL image (Pillow is imported lazily)
Images = ImageInput | Sequence[ImageInput]


@dataclass
class ReadImage:
    """An input already read (``anogan.data.reading``): ``Detector.predict`` takes it as it is."""

    source: str  # the file's path, or "input[i]" for an in-memory image
    pixels: np.ndarray  # uint8 H×W×C, the image at its own size
    notes: list[read_notes.Note] = field(default_factory=list)  # what reading it interpreted


def _is_pil(obj: object) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "mode") and hasattr(obj, "size")


def _tensor_images(tensor: torch.Tensor, name: str) -> list[np.ndarray]:
    """C×H×W or N×C×H×W (C = 1..4) -> H×W×C numpy arrays (same dtype rules as numpy arrays)."""
    given = tuple(tensor.shape)
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.dim() != 4 or tensor.shape[1] not in (1, 2, 3, 4):
        channels_last = tensor.dim() == 4 and tensor.shape[-1] in (1, 2, 3, 4)
        hint = f": an H×W×C tensor is tensor.permute({'2, 0, 1' if len(given) == 3 else '0, 3, 1, 2'})" if channels_last else ""
        raise InputError(
            f"{name}: a tensor of shape {given} is not an image: tensors are C×H×W or N×C×H×W (channels first) "
            f"with C = 1, 2, 3 or 4{hint}"
        )
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    array = tensor.detach().cpu().permute(0, 2, 3, 1).numpy()
    return list(array)


def collect(images: Images, errors: str, alpha: str = "black") -> tuple[list[ReadImage], list[tuple[str, str]]]:
    """Every input as uint8 H×W×C pixels with its reading notes, in order (transparency by
    ``alpha``); unreadable files skipped (``errors="skip"``) or raised (``"raise"``). Wrong types,
    shapes, dtypes and ranges always raise ``InputError``."""
    items: list[ReadImage] = []
    skipped: list[tuple[str, str]] = []

    def add_file(path: Path) -> None:
        try:
            items.append(ReadImage(str(path), *read_pixels(path, alpha)))
        except ImageError as err:
            if errors == "raise":
                raise InputError(f"{path}: {err}") from None
            skipped.append((str(path), str(err)))

    def add_memory(read: Callable[[Any, str], tuple[np.ndarray, list[read_notes.Note]]], obj: Any, name: str) -> None:
        try:
            items.append(ReadImage(name, *read(obj, alpha)))
        except ImageError as err:
            raise InputError(f"{name}: {err}") from None

    single = not isinstance(images, (list, tuple))
    for index, obj in enumerate(list(images) if isinstance(images, (list, tuple)) else [images]):
        name = f"input[{index}]"
        if isinstance(obj, ReadImage):
            items.append(obj)
        elif isinstance(obj, (str, Path)):
            path = Path(obj).expanduser()
            if path.is_dir():
                found, listed_skipped = list_images(path)
                skipped.extend((entry["file"], entry["reason"]) for entry in listed_skipped)
                if not found:
                    raise InputError(f"{path} holds no image (searched recursively).")
                for file in found:
                    add_file(file)
            elif path.is_file():
                add_file(path)
            else:
                raise InputError(f"{path} does not exist: give an image file or a folder of images.")
        elif isinstance(obj, np.ndarray):
            add_memory(read_array, obj, name)
        elif isinstance(obj, torch.Tensor):  # a batch given alone: input[j]; a batch in a list: input[i][j]
            for row, array in enumerate(_tensor_images(obj, name)):
                rows_name = f"input[{row}]" if single else f"{name}[{row}]"
                add_memory(read_array, array, rows_name if obj.dim() == 4 else name)
        elif _is_pil(obj):
            add_memory(read_pil, obj, name)
        else:
            raise InputError(
                f"{name}: a {type(obj).__name__} is not an image: give a path, a folder, a PIL image, "
                "a numpy array (H×W or H×W×C) or a tensor (N×C×H×W), or a list of them"
            )
    return items, skipped
