"""Named sets of geometric transformations, for the discriminator's self-supervised head.

A transformation set is a fixed, ordered list of transformations; the auxiliary head of D
(``Discriminator(transform_classes=T)``) classifies which one an image was given, and the scorers
that read D sum its cross-entropy over every transformed copy of an image. Two sets:

* ``rotations`` (T = 4): rotation by 0, 90, 180, 270 degrees, ``torch.rot90(x, k, dims=(2, 3))``
  for k = 0..3 (Chen et al., CVPR 2019, "Self-Supervised GANs via Auxiliary Rotation Loss";
  Gidaris et al., ICLR 2018).
* ``geotrans`` (T = 72): Golan & El-Yaniv, NeurIPS 2018, "Deep Anomaly Detection Using Geometric
  Transformations" (their ``transformations.py::Transformer``, the same order):
  ``itertools.product(flip in (False, True), tx in (0, -t, +t), ty in (0, -t, +t), k in 0..3)``
  with t = S/4 px (8 px at 32 px, their default), each applied as: horizontal flip (of the width
  axis), then the translation, then ``rot90`` by k. Their translation is Keras'
  ``apply_affine_transform(tx, ty, fill_mode="reflect")``: ``out[i, j] = in[i + tx, j + ty]``
  (tx moves along the rows, ty along the columns), padded by scipy's ``reflect`` mode, i.e. the
  half-sample symmetric extension ``d c b a | a b c d | d c b a`` (numpy's ``symmetric``).

Everything is a composition of ``flip``, ``transpose`` and ``index_select`` with constant index
tensors (``torch.rot90`` itself has no ONNX export), so the functions trace to ONNX with a dynamic
batch, and each image is transformed on its own (no statistic of the batch is used).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch

from anogan.config.gan_options import check_transform_set


class Transform(NamedTuple):
    """One transformation: ``flip`` the width axis, shift by ``(rows, cols)`` quarters of the image
    size (out[i, j] = in[i + rows·S/4, j + cols·S/4], symmetric padding), then rotate by ``k``·90°
    (``torch.rot90(·, k, dims=(2, 3))``, counter-clockwise)."""

    flip: bool = False
    rows: int = 0
    cols: int = 0
    k: int = 0


TRANSFORM_SETS: dict[str, tuple[Transform, ...]] = {
    "rotations": tuple(Transform(k=k) for k in range(4)),
    "geotrans": tuple(
        Transform(flip, rows, cols, k)
        for flip, rows, cols, k in itertools.product((False, True), (0, -1, 1), (0, -1, 1), range(4))
    ),
}


def transform_count(name: str) -> int:
    """T, the number of transformations of the set ``name``; ``UserError`` for an unknown name."""
    if name not in TRANSFORM_SETS:
        check_transform_set(name)
    return len(TRANSFORM_SETS[name])


def _symmetric_index(size: int, shift: int, device: torch.device) -> torch.Tensor:
    """Source index of each output index for out[i] = in[i + shift], half-sample symmetric padding."""
    src = torch.arange(size, device=device) + shift
    src = torch.where(src < 0, -src - 1, src)
    return torch.where(src >= size, 2 * size - src - 1, src)


def _rot90(x: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.rot90(x, k, dims=(2, 3))`` from flips and a transpose (what torch.rot90 does inside)."""
    k %= 4
    if k == 1:
        return x.flip(3).transpose(2, 3)
    if k == 2:
        return x.flip(2).flip(3)
    if k == 3:
        return x.flip(2).transpose(2, 3)
    return x


def apply_transform(x: torch.Tensor, transform: Transform) -> torch.Tensor:
    """One transformation of a batch: N×C×S×S -> N×C×S×S (square images; see ``Transform``)."""
    size = int(x.shape[-1])
    if transform.flip:
        x = x.flip(3)
    if transform.rows:
        x = x.index_select(2, _symmetric_index(size, transform.rows * size // 4, x.device))
    if transform.cols:
        x = x.index_select(3, _symmetric_index(size, transform.cols * size // 4, x.device))
    return _rot90(x, transform.k)


def apply_transforms(x: torch.Tensor, name: str) -> torch.Tensor:
    """Every transformation of the set ``name`` on every image: N×C×S×S -> (T·N)×C×S×S, transform-major
    (rows t·N .. t·N + N − 1 hold the N images under transformation t); labels: ``transform_labels``."""
    return torch.cat([apply_transform(x, t) for t in TRANSFORM_SETS[name]], dim=0)


def transform_labels(n: int, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The labels of ``apply_transforms`` of n images: ``arange(T).repeat_interleave(n)``, LongTensor (T·n,)."""
    return torch.arange(transform_count(name), device=device).repeat_interleave(n)


def apply_one_each(x: torch.Tensor, labels: torch.Tensor, name: str) -> torch.Tensor:
    """Image i under transformation ``labels[i]``: N×C×S×S, labels (N,) -> N×C×S×S. What training uses:
    one transformation per image costs one D pass per batch whatever T is (see ``balanced_labels``)."""
    out = torch.empty_like(x)
    for t in labels.unique().tolist():
        idx = (labels == t).nonzero().flatten()
        out[idx] = apply_transform(x[idx], TRANSFORM_SETS[name][t])
    return out


def balanced_labels(n: int, name: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random transformation per image, every one of the T used ⌊n/T⌋ or ⌈n/T⌉ times:
    ``randperm(n) % T`` (LongTensor (n,), on the CPU; ``generator`` seeds it)."""
    return torch.randperm(n, generator=generator) % transform_count(name)
