"""Negative data augmentation (NDA): real images made implausible, shown to the discriminator as fake.

Sinha et al., ICLR 2021, "Negative Data Augmentation": transformations that keep an image's
low-level statistics but break its global structure give samples of a negative distribution P̄
outside the data's support; mixing them into the distribution D must call fake,

    p_fake = (1 − w) · p_G + w · P̄,

teaches D what a normal image's structure is, so D's own output becomes an anomaly score
(``mapping=dlogit``). With the BCE objective D's loss is

    BCE(D(x), 1) + (1 − w) · BCE(D(G(z)), 0) + w · BCE(D(nda(x)), 0),

the exact expectation of the mixture (rather than replacing a random share of the fake batch), with
w = ``model.nda_weight``; with ``wgan_gp`` the critic's fake term is (1 − w)·E[D(G(z))] + w·E[D(nda(x))].
G's loss is unchanged: G never sees the negatives.

The transformations (``NDA_TRANSFORMS``; ``model.nda`` names a comma-separated subset, each real image
gets one of them, drawn uniformly):

* ``jigsaw``: the image cut into 2×2 quarters, put back in a random order other than the identity.
* ``cutout``: a square of half the image side, at a random position, set to 0 (mid-grey in [−1, 1]).
* ``rotation``: rotated by 90, 180 or 270 degrees (``torch.rot90``), drawn uniformly.

All draws come from a ``torch.Generator`` when one is given (tests), else from torch's global stream.
"""

from __future__ import annotations

import itertools

import torch

# the 23 orders of the 4 quarters other than the identity (quarter q at position perm[q])
_JIGSAW_ORDERS = torch.tensor([p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)])


def jigsaw(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Each image's 2×2 quarters rearranged: x N×C×S×S (S even), ``order`` N×4 (a permutation of 0..3 per
    image): the quarter q (row-major: top-left, top-right, bottom-left, bottom-right) goes to position
    ``order[n, q]``."""
    n, c, s, _ = x.shape
    h = s // 2
    quarters = x.reshape(n, c, 2, h, 2, h).permute(0, 2, 4, 1, 3, 5).reshape(n, 4, c, h, h)
    out = torch.empty_like(quarters)
    out.scatter_(1, order[:, :, None, None, None].expand_as(quarters), quarters)
    return out.reshape(n, 2, 2, c, h, h).permute(0, 3, 1, 4, 2, 5).reshape(n, c, s, s)


def cutout(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side: int) -> torch.Tensor:
    """x N×C×S×S with the square [top, top + side) × [left, left + side) of each image set to 0."""
    s = x.shape[-1]
    rows = torch.arange(s, device=x.device)[None, :, None]
    cols = torch.arange(s, device=x.device)[None, None, :]
    t, lft = top.to(x.device)[:, None, None], left.to(x.device)[:, None, None]
    inside = (rows >= t) & (rows < t + side) & (cols >= lft) & (cols < lft + side)
    return x.masked_fill(inside[:, None], 0.0)


def negatives(x: torch.Tensor, names: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """One negative per real image (N×C×S×S -> N×C×S×S): image i gets the transformation
    ``names[choice[i]]`` with ``choice`` uniform, and that transformation's own random draw
    (module docstring). ``names`` must be non-empty (``parse_nda``)."""
    n, s = x.shape[0], x.shape[-1]
    choice = torch.randint(len(names), (n,), generator=generator)
    order = _JIGSAW_ORDERS[torch.randint(len(_JIGSAW_ORDERS), (n,), generator=generator)]
    side = s // 2
    top, left = torch.randint(s - side + 1, (n,), generator=generator), torch.randint(s - side + 1, (n,), generator=generator)
    turns = torch.randint(1, 4, (n,), generator=generator)
    out = x.clone()
    for k, name in enumerate(names):
        idx = (choice == k).nonzero().flatten()
        if not len(idx):
            continue
        images = x[idx.to(x.device)]
        if name == "jigsaw":
            done = jigsaw(images, order[idx].to(x.device))
        elif name == "cutout":
            done = cutout(images, top[idx], left[idx], side)
        else:
            done = torch.stack([torch.rot90(img, int(t), dims=(1, 2)) for img, t in zip(images, turns[idx])])
        out[idx.to(x.device)] = done
    return out
