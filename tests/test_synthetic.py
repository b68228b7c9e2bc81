"""Synthetic validation anomalies: each mask covers exactly what was changed, runs are reproducible."""

import numpy as np
import pytest
import torch

from anogan.data.synthetic import blend, cutpaste, synthetic_anomalies


def _images(n=6, channels=3, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, channels, size, size)).astype(np.uint8))


def test_cutpaste_pastes_one_rectangle_of_2_to_15_percent():
    rng = np.random.default_rng(0)
    for image in _images(20):
        out, mask = cutpaste(image, rng)
        assert out.dtype == mask.dtype == torch.uint8 and mask.shape == (1, 32, 32)
        ys, xs = torch.nonzero(mask[0], as_tuple=True)
        box = mask[0, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.all() and box.numel() == mask.sum()  # one filled rectangle
        assert 0.01 * 32 * 32 <= mask.sum() <= 0.17 * 32 * 32  # 2-15% of the area, up to rounding
        changed = (out != image).any(0)
        assert not (changed & ~mask[0].bool()).any()  # nothing changed outside the mask
        assert changed.sum() >= 0.9 * mask.sum()  # and (on noise) nearly every masked pixel changed


def test_blend_changes_only_the_thresholded_noise_blobs():
    rng = np.random.default_rng(1)
    images = _images(10, channels=1)
    for image in images:
        texture = 255 - torch.rot90(image, 1, dims=(1, 2))
        out, mask = blend(image, texture, rng)
        share = mask.float().mean().item()
        assert 0.04 <= share <= 0.26
        changed = (out != image).any(0)
        assert not (changed & ~mask[0].bool()).any() and changed.sum() >= 0.8 * mask.sum()


@pytest.mark.parametrize("method", ["cutpaste", "blend"])
def test_synthetic_anomalies_are_seeded(method):
    images = _images()
    out, masks = synthetic_anomalies(images, method, seed=7)
    assert out.shape == images.shape and masks.shape == (6, 1, 32, 32)
    assert torch.equal(images, _images())  # the normals are left as they were
    again, again_masks = synthetic_anomalies(images, method, seed=7)
    assert torch.equal(out, again) and torch.equal(masks, again_masks)
    other, other_masks = synthetic_anomalies(images, method, seed=8)
    assert not torch.equal(masks, other_masks)
    one, one_mask = synthetic_anomalies(images[:1], method, seed=7)  # a single image: blend uses itself
    assert one.shape == (1, 3, 32, 32) and one_mask.any()
    assert synthetic_anomalies(images[:0], method, seed=7)[1].shape == (0, 1, 32, 32)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="cutpaste"):
        synthetic_anomalies(_images(1), "perlin", seed=0)
