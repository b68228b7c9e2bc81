import itertools

import pytest
import torch

from anogan.metrics import OneClassSplitError, evaluate, fit_thresholds
from anogan.scores import complexity, primary_score, resolve_auto


def brute_force_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_force_best_f1(scores, labels):
    best = (-1.0, None)
    for t in sorted(set(scores)):
        pred = [int(s >= t) for s in scores]
        tp = sum(p and y for p, y in zip(pred, labels))
        fp = sum(p and not y for p, y in zip(pred, labels))
        fn = sum((not p) and y for p, y in zip(pred, labels))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best[0]:
            best = (f1, t)
    return best


def test_threshold_on_a_known_list():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    labels = torch.tensor([0, 0, 1, 0, 1, 1])
    t = fit_thresholds(scores, labels)
    assert t["f1"] == 3.0  # predicts 3,4,5,6 anomalous: tp 3, fp 1 -> F1 6/7, the best cut
    assert abs(t["f1_value"] - 6 / 7) < 1e-12
    assert t["youden"] == 3.0 and abs(t["youden_value"] - (1 - 1 / 3)) < 1e-12


def test_threshold_matches_brute_force_on_random_scores_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 15, (40,), generator=g).double()
        labels = torch.randint(0, 2, (40,), generator=g)
        if labels.min() == labels.max():
            continue
        f1, thr = brute_force_best_f1(scores.tolist(), labels.tolist())
        got = fit_thresholds(scores, labels)
        assert abs(got["f1_value"] - f1) < 1e-12 and got["f1"] == thr


def test_metrics_against_reference_computation():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(200, generator=g) * 300 + 1000  # raw scores far outside [0, 1]
    labels = (torch.rand(200, generator=g) < 0.3).long()
    scores[labels == 1] += 150
    m = evaluate(scores, labels, threshold=1100.0)
    assert abs(m["auroc"] - brute_force_auroc(scores.tolist(), labels.tolist())) < 1e-6
    pred = (scores >= 1100.0).long()
    tp = int(((pred == 1) & (labels == 1)).sum()); fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum()); tn = int(((pred == 0) & (labels == 0)).sum())
    assert m["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert abs(m["precision"] - tp / (tp + fp)) < 1e-6 and abs(m["recall"] - tp / (tp + fn)) < 1e-6
    assert abs(m["f1"] - 2 * tp / (2 * tp + fp + fn)) < 1e-6 and abs(m["accuracy"] - (tp + tn) / 200) < 1e-6
    # average precision: mean of precision at each positive, ranked by score
    order = torch.argsort(scores, descending=True)
    hits, ap = 0, 0.0
    for k, i in enumerate(order.tolist(), 1):
        if labels[i]:
            hits += 1
            ap += hits / k
    assert abs(m["ap"] - ap / int(labels.sum())) < 1e-6


def test_a_single_class_split_is_refused_with_a_clear_message():
    with pytest.raises(OneClassSplitError, match="only normal images"):
        fit_thresholds(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
    with pytest.raises(OneClassSplitError, match="only anomalous images"):
        evaluate(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]), 1.5)


def test_complexity_and_the_corrected_score_on_known_images():
    flat = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    stripes = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    stripes[..., :, 1::2] = 255  # every horizontal neighbour differs by 1.0, vertical ones by 0
    c = complexity(torch.cat([flat, stripes]))
    assert torch.allclose(c, torch.tensor([0.0, 1.0]))
    raw = torch.tensor([3.0, 3.0])
    assert torch.equal(primary_score(raw, c, "none"), raw.double())
    corrected = primary_score(raw, c, "complexity")
    assert corrected[1] == 3.0 and corrected[0] > 1e6  # a flat image ranks as the most anomalous
    with pytest.raises(ValueError, match="mapping.correction"):
        primary_score(raw, c, "jpeg")


def test_auto_correction_picks_the_score_that_ranks_validation_better():
    labels = torch.tensor([0, 0, 1, 1])
    raw = torch.tensor([1.0, 2.0, 3.0, 4.0])  # perfect alone
    assert resolve_auto(raw, torch.tensor([0.1, 0.1, 10.0, 10.0]), labels) == "none"  # corrected inverts it
    busy_normals = torch.tensor([4.0, 4.0, 0.5, 0.5])
    assert resolve_auto(torch.tensor([4.0, 3.0, 2.0, 1.0]), busy_normals, labels) == "complexity"
