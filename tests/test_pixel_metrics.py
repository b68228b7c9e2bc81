"""Pixel AUROC, AUPRO and per-defect AUROC against brute-force references on hand-made masks."""

import itertools
from collections import deque

import numpy as np
import pytest

from anogan.metrics.pixel import aupro, connected_components, per_defect_auroc, pixel_auroc, pro_curve
from anogan.metrics.stats import auroc
from anogan.utils.errors import MaskError


def bfs_regions(mask):
    """8-connected regions of one 2-D mask, by breadth-first search: a list of pixel sets."""
    seen, regions = set(), []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if start in seen:
            continue
        region, queue = set(), deque([start])
        seen.add(start)
        while queue:
            i, j = queue.popleft()
            region.add((i, j))
            for di, dj in itertools.product((-1, 0, 1), repeat=2):
                q = (i + di, j + dj)
                if 0 <= q[0] < h and 0 <= q[1] < w and mask[q] and q not in seen:
                    seen.add(q)
                    queue.append(q)
        regions.append(region)
    return regions


def brute_force_aupro(maps, masks, limit=0.3):
    """Every distinct threshold, PRO and FPR counted pixel by pixel, trapezoids, interpolation at the limit."""
    regions = [(n, r) for n in range(len(masks)) for r in bfs_regions(masks[n])]
    normal = masks == 0
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        flagged = maps >= t
        fpr = (flagged & normal).sum() / normal.sum()
        pro = np.mean([sum(flagged[n][p] for p in r) / len(r) for n, r in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < limit:
                y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


def hand_made_case(rng, integer_maps):
    """3 images of 8×8: two regions (one of them diagonal-only connected), one region, none."""
    masks = np.zeros((3, 8, 8), dtype=np.int64)
    masks[0, 1:3, 1:3] = 1
    masks[0, 5, 5] = masks[0, 6, 6] = masks[0, 7, 7] = 1  # a diagonal line: one region with 8-connectivity
    masks[1, 2:6, 3:5] = 1
    maps = rng.integers(0, 6, masks.shape).astype(float) if integer_maps else rng.normal(size=masks.shape)
    return maps + 2.0 * masks, masks


def test_connected_components_match_breadth_first_search():
    assert connected_components(np.array([[[1, 0], [0, 1]]])).max() == 1  # diagonal neighbours: 8-connected
    assert connected_components(np.array([[[1, 0, 1]]])).max() == 2
    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.7):
        masks = rng.random((4, 12, 15)) < density
        labels = connected_components(masks)
        expected = [(n, frozenset(r)) for n in range(4) for r in bfs_regions(masks[n])]
        got = {}
        for n, i, j in zip(*np.nonzero(labels)):
            got.setdefault(labels[n, i, j], set()).add((i, j))
        got_sets = {(next(n for n in range(4) if labels[n][next(iter(p))] == k), frozenset(p)) for k, p in got.items()}
        assert len(got) == len(expected) == labels.max() and got_sets == set(expected)
    snake = np.zeros((1, 9, 9), dtype=bool)  # a long path: many union-find rounds
    snake[0, ::2, :] = True
    snake[0, 1::4, -1] = snake[0, 3::4, 0] = True
    assert connected_components(snake).max() == 1


def test_connected_components_on_a_known_mask():
    """Regions numbered in row-major order of their first pixel, across the images in turn."""
    masks = np.array(
        [
            [[1, 1, 0, 0, 1], [0, 0, 0, 1, 0], [1, 0, 0, 0, 0], [1, 0, 1, 1, 0]],
            [[0, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 1, 0, 1], [1, 0, 0, 0, 0]],
        ]
    )
    expected = np.array(
        [
            [[1, 1, 0, 0, 2], [0, 0, 0, 2, 0], [3, 0, 0, 0, 0], [3, 0, 4, 4, 0]],
            [[0, 0, 0, 0, 0], [0, 5, 0, 0, 6], [0, 0, 5, 0, 6], [7, 0, 0, 0, 0]],
        ]
    )
    labels = connected_components(masks)
    assert labels.dtype == np.int64 and labels.tolist() == expected.tolist()
    stacked = connected_components(np.ones((2, 2, 2)))  # the same pixels in two images: two regions
    assert stacked[0].tolist() == [[1, 1], [1, 1]] and stacked[1].tolist() == [[2, 2], [2, 2]]


@pytest.mark.parametrize("integer_maps", [False, True])
def test_aupro_equals_the_brute_force_reference(integer_maps):
    rng = np.random.default_rng(1 + integer_maps)
    for _ in range(3):
        maps, masks = hand_made_case(rng, integer_maps)
        for limit in (0.3, 0.05, 1.0):
            assert abs(aupro(maps, masks, fpr_limit=limit) - brute_force_aupro(maps, masks, limit)) < 1e-12


def test_aupro_on_known_values():
    # regions A (2 px) and B (4 px), 10 normal pixels: the curve is (0,0) (0,.75) (.2,.75) (.2,1) (1,1)
    masks = np.zeros((1, 1, 16), dtype=np.int64)
    masks[0, 0, :2] = 1
    masks[0, 0, 3:7] = 1  # pixel 2 separates A from B
    maps = np.zeros((1, 1, 16))
    maps[0, 0, :2] = 3
    maps[0, 0, 3:7] = [3, 3, 1, 1]
    maps[0, 0, 7:9] = 2  # two normal pixels above B's lower half
    assert abs(aupro(maps, masks) - (0.2 * 0.75 + 0.1 * 1.0) / 0.3) < 1e-12
    fpr, pro = pro_curve(maps, masks)
    assert np.allclose(fpr, [0, 0, 0.2, 0.2, 1]) and np.allclose(pro, [0, 0.75, 0.75, 1, 1])
    assert aupro(masks.astype(float), masks) == 1.0  # a perfect map
    assert aupro(-masks.astype(float), masks) == 0.0  # an inverted one


def test_an_image_without_defect_counts_only_towards_the_false_positive_rate():
    rng = np.random.default_rng(3)
    maps, masks = hand_made_case(rng, False)
    quiet = maps.copy()
    quiet[2] = -100.0  # the defect-free image never flagged before every region pixel is
    noisy = maps.copy()
    noisy[2] = 100.0  # ... or flagged first
    assert aupro(quiet[:2], masks[:2]) < aupro(quiet, masks)  # more normal pixels, none flagged early: lower FPR
    assert aupro(noisy, masks) < 0.05  # its 64 pixels alone are 64/172 of the normal pixels: FPR > 0.3 before any PRO
    assert abs(aupro(noisy, masks) - brute_force_aupro(noisy, masks)) < 1e-12


def test_aupro_with_a_threshold_grid_approaches_the_exact_value():
    rng = np.random.default_rng(4)
    maps, masks = hand_made_case(rng, False)
    exact = aupro(maps, masks)
    assert aupro(maps, masks, num_thresholds=100_000) == pytest.approx(exact, abs=1e-3)
    assert abs(aupro(maps, masks, num_thresholds=10) - exact) > 1e-6  # a coarse grid differs


def test_pixel_auroc_against_brute_force():
    rng = np.random.default_rng(5)
    maps, masks = hand_made_case(rng, True)
    maps = maps * 1000.0  # far outside [0, 1]: no sigmoid
    pos, neg = maps[masks == 1], maps[masks == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert abs(pixel_auroc(maps, masks) - wins / (len(pos) * len(neg))) < 1e-6


def test_masks_that_cannot_be_scored_are_refused():
    maps = np.zeros((2, 4, 4))
    with pytest.raises(MaskError, match="no mask has a defect pixel"):
        aupro(maps, np.zeros((2, 4, 4), dtype=int))
    with pytest.raises(MaskError, match="one shape"):
        pixel_auroc(maps, np.zeros((2, 4, 5), dtype=int))
    with pytest.raises(MaskError, match="only 0"):
        aupro(maps, np.full((2, 4, 4), 255))


def test_per_defect_auroc():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.25, 0.05])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    names = np.array(["good", "good", "good", "crack", "crack", "scratch", "scratch"])
    got = per_defect_auroc(scores, labels, names)
    assert got == {"crack": 1.0, "scratch": auroc([0.1, 0.2, 0.3, 0.25, 0.05], [0, 0, 0, 1, 1])}
    assert got["scratch"] == pytest.approx((2 / 3 + 0) / 2)
