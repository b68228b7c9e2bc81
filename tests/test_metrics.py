import pytest
import torch

from anogan.metrics.image import evaluate, fit_thresholds
from anogan.post_processing.calibration import primary_score, resolve_auto
from anogan.post_processing.scores import complexity
from anogan.utils.errors import OneClassSplitError
from conftest import brute_force_auroc


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
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())
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
    with pytest.raises(OneClassSplitError, match="only anomalous images"):
        fit_thresholds(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))  # the FPR rule needs normals
    with pytest.raises(OneClassSplitError, match="only anomalous images"):
        evaluate(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]), 1.5)
    with pytest.raises(OneClassSplitError, match="only normal images"):
        evaluate(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), 1.5)


def test_complexity_and_the_corrected_score_on_known_images():
    flat = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    stripes = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    stripes[..., :, 1::2] = 255  # every horizontal neighbour differs by 1.0, vertical ones by 0
    c = complexity(torch.cat([flat, stripes]))
    assert c.dtype == torch.float64 and torch.allclose(c, torch.tensor([0.0, 1.0], dtype=torch.float64))
    raw = torch.tensor([3.0, 3.0])
    assert torch.equal(primary_score(raw, c, "none"), raw.double())
    corrected = primary_score(raw, c, "complexity")
    assert corrected[1] == 3.0 and corrected[0] == 3.0 * 255  # a flat image: the floor 1/255, the most anomalous
    with pytest.raises(ValueError, match="mapping.correction"):
        primary_score(raw, c, "jpeg")


def test_auto_correction_picks_the_score_that_ranks_validation_better():
    labels = torch.tensor([0, 0, 1, 1])
    raw = torch.tensor([1.0, 2.0, 3.0, 4.0])  # perfect alone
    assert resolve_auto(raw, torch.tensor([0.1, 0.1, 10.0, 10.0]), labels) == "none"  # corrected inverts it
    busy_normals = torch.tensor([4.0, 4.0, 0.5, 0.5])
    assert resolve_auto(torch.tensor([4.0, 3.0, 2.0, 1.0]), busy_normals, labels) == "complexity"


# ---------------------------------------------------------------------- conformal p-values, thresholds
import math  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import rankdata  # noqa: E402
from torchmetrics.functional.classification import binary_auroc, binary_average_precision  # noqa: E402

from anogan.metrics.image import _cut_points, fpr_threshold, resolve_threshold, to_unit_interval, trapezoid_auroc  # noqa: E402
from anogan.metrics.stats import (  # noqa: E402
    _weighted_ap,
    _weighted_auroc,
    auroc,
    bootstrap_ci,
    bootstrap_statistics,
    conformal_p_values,
    random_auroc_interval,
    stratified_counts,
)
from anogan.utils.errors import CalibrationError, ThresholdRuleError  # noqa: E402


def test_p_values_on_a_known_list():
    p = conformal_p_values(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 2.0, 2.5, 4.0, 5.0]))
    assert p.dtype == torch.float64
    assert p.tolist() == [5 / 5, 4 / 5, 3 / 5, 2 / 5, 1 / 5]  # (1 + #{cal >= s}) / (4 + 1)


def test_p_values_match_the_definition_with_ties():
    g = torch.Generator().manual_seed(3)
    cal = torch.randint(0, 10, (57,), generator=g).double()
    s = torch.randint(-1, 12, (6, 7), generator=g).double()
    p = conformal_p_values(cal, s)
    expected = [(1 + sum(c >= v for c in cal.tolist())) / 58 for v in s.flatten().tolist()]
    assert p.shape == s.shape and p.flatten().tolist() == expected
    with pytest.raises(CalibrationError, match="no normal validation image"):
        conformal_p_values(torch.tensor([]), s)


def test_fpr_threshold_on_a_known_list():
    # 19 normals, compared in float64 as the metrics do: 0.1 * (19 + 1) = 2 -> at most 1 may reach t
    normals = torch.arange(1.0, 20.0, dtype=torch.float64)
    t = fpr_threshold(normals, 0.1)
    assert 18.0 < t <= 18.0 + 1e-12  # the smallest float above the 2nd largest normal
    assert int((normals >= t).sum()) == 1
    assert fpr_threshold(normals, 0.04) == math.inf  # 0.04 * 20 < 1: no p-value is that small
    assert fpr_threshold(torch.arange(1.0, 101.0), 0.05) > 96.0  # n = 100: flags 4 (not 5) of 100


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.29, 0.5])
def test_fpr_threshold_is_exactly_flagging_p_values_at_most_alpha(alpha):
    g = torch.Generator().manual_seed(int(alpha * 1000))
    for n, tied in ((99, False), (100, True), (137, True), (20, False)):
        cal = torch.randint(0, 30, (n,), generator=g).double() if tied else torch.randn(n, generator=g, dtype=torch.float64)
        t = fpr_threshold(cal, alpha)
        # every calibration value, its float neighbours, and random points
        up, down = torch.tensor(math.inf, dtype=torch.float64), torch.tensor(-math.inf, dtype=torch.float64)
        noise = torch.randn(200, generator=g, dtype=torch.float64) * 20
        probes = torch.cat([cal, torch.nextafter(cal, up), torch.nextafter(cal, down), noise])
        if math.isfinite(t):
            probes = torch.cat([probes, torch.tensor([t]), torch.nextafter(torch.tensor([t], dtype=torch.float64), down)])
        assert torch.equal(probes >= t, conformal_p_values(cal, probes) <= alpha)
        assert float((cal >= t).double().mean()) <= alpha  # also within the target on these normals


@pytest.mark.parametrize("repeats", [2_000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_calibration_false_positive_rate_over_random_splits(repeats, capsys):
    """Issue 13: over repeated random validation/test splits of exchangeable normal scores,
    flagging p <= alpha (equivalently score >= the fpr threshold) marks test normals at rate alpha.

    Each repeat draws 101 normal scores, splits them at random into 100 validation and 1 test
    image: the repeats are independent Bernoulli trials, so the binomial interval is exact
    (several test images per repeat would share one calibration and be correlated). With 20,000
    repeats (slow) the test also tells the conformal rule (5/101 flagged at 5%) from the plain
    empirical quantile (6/101)."""
    rng = np.random.default_rng(2023)
    n_val, alphas = 100, (0.01, 0.05, 0.1)
    p = np.empty(repeats)
    naive_flags = np.zeros(len(alphas))
    for r in range(repeats):
        pool = rng.standard_t(3, size=n_val + 1) * 10 + 50  # heavy tails: the guarantee is distribution-free
        order = rng.permutation(n_val + 1)
        val, test = pool[order[:n_val]], pool[order[n_val:]]
        p[r] = float(conformal_p_values(val, test)[0])
        if r < 200:  # the threshold rule flags exactly the same images
            for a in alphas:
                assert (test[0] >= fpr_threshold(val, a)) == (p[r] <= a)
        ranked = np.sort(val)[::-1]
        for i, a in enumerate(alphas):  # the plain empirical quantile, for comparison
            naive_flags[i] += test[0] > ranked[math.floor(a * n_val)]
    lines, naive_inside = [], []
    for i, a in enumerate(alphas):
        observed = float((p <= a).mean())
        sd = math.sqrt(a * (1 - a) / repeats)
        lo, hi = a - 2.576 * sd, a + 2.576 * sd  # binomial 99% interval (normal approximation)
        naive = naive_flags[i] / repeats
        naive_inside.append(lo <= naive <= hi)
        lines.append(
            f"alpha {a:.2f}: observed FPR {observed:.4f} (99% interval [{lo:.4f}, {hi:.4f}]), "
            f"plain empirical quantile {naive:.4f}"
        )
        assert lo <= observed <= hi, lines[-1]
    with capsys.disabled():
        print(f"\ncalibration over {repeats} random splits (100 validation normals, 1 test normal each):")
        print("  " + "\n  ".join(lines))
    if repeats >= 20_000:
        assert not naive_inside[1]  # the test has the power to reject a rule off by one normal


def test_thresholds_with_normals_only_give_the_fpr_rule_alone():
    t = fit_thresholds(torch.arange(1.0, 20.0), torch.zeros(19, dtype=torch.long), target_fpr=0.1)
    assert t["f1"] is None and t["youden"] is None and t["f1_value"] is None
    assert 18.0 < t["fpr"] < 18.0 + 1e-12 and t["fpr_target"] == 0.1 and t["fpr_observed"] == 1 / 19


def test_threshold_rule_selection():
    t = fit_thresholds(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), torch.tensor([0, 0, 1, 0, 1, 1]), target_fpr=0.3)
    assert resolve_threshold(t, "fpr") == t["fpr"] and resolve_threshold(t, "f1") == 3.0 and resolve_threshold(t, "youden") == 3.0
    assert resolve_threshold(t, 2.5) == 2.5 and resolve_threshold(t, "2.5") == 2.5 and resolve_threshold(t, " youden ") == 3.0
    with pytest.raises(ThresholdRuleError, match=r"^threshold='median': use fpr, f1, youden or a finite number$"):
        resolve_threshold(t, "median")
    for bad in ("nan", "inf", " NaN "):
        with pytest.raises(ThresholdRuleError, match="a finite number"):
            resolve_threshold(t, bad)
    normal_only = fit_thresholds(torch.arange(1.0, 30.0), torch.zeros(29, dtype=torch.long))
    with pytest.raises(ThresholdRuleError, match="threshold=f1 needs anomalous validation images"):
        resolve_threshold(normal_only, "f1")


# ---------------------------------------------------------------------- AUROC by ranks, bootstrap
def hand_midranks(x):
    """1-based ranks, tied values sharing their average rank, by sorting and grouping ties."""
    order = np.argsort(x, kind="stable")
    xs = np.asarray(x, dtype=np.float64)[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(xs))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def test_rankdata_gives_the_midranks_bit_for_bit():
    assert rankdata(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    rng = np.random.default_rng(7)
    for trial in range(50):
        n = int(rng.integers(1, 300))
        x = rng.integers(0, 9, n).astype(float) if trial % 2 else rng.normal(size=n)
        ranks = rankdata(x)
        assert ranks.dtype == np.float64 and ranks.tobytes() == hand_midranks(x).tobytes()


def test_auroc_on_a_hand_computed_example_with_ties():
    # anomalies 3, 2, 2 against normals 2, 1, 1, 0: pairs won 4 + (3 + ½) + (3 + ½), of 12
    scores, labels = [3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.0], [1, 1, 1, 0, 0, 0, 0]
    assert auroc(scores, labels) == 11 / 12
    assert auroc([1.0, 1.0], [0, 1]) == 0.5
    # the curve's area (torchmetrics, float32) is the same number up to float32 rounding
    assert abs(trapezoid_auroc(torch.tensor(scores), torch.tensor(labels)) - 11 / 12) < 1e-6
    with pytest.raises(ValueError, match="NaN"):
        auroc([float("nan"), 1.0], [0, 1])


def brute_force_cut_points(scores, labels):
    t = sorted(set(scores), reverse=True)
    tp = [sum(1 for s, y in zip(scores, labels) if s >= v and y) for v in t]
    fp = [sum(1 for s, y in zip(scores, labels) if s >= v and not y) for v in t]
    return t, tp, fp


def test_cut_points_count_every_distinct_score_exactly():
    t, tp, fp = _cut_points(torch.tensor([5.0, 1.0, 5.0, 3.0, -2.0]), torch.tensor([1, 0, 0, 1, 0]))
    assert t.tolist() == [5.0, 3.0, 1.0, -2.0] and tp.tolist() == [1.0, 2.0, 2.0, 2.0] and fp.tolist() == [1.0, 1.0, 2.0, 3.0]
    assert t.dtype == tp.dtype == fp.dtype == torch.float64
    rng = np.random.default_rng(8)
    for trial in range(20):
        n = int(rng.integers(2, 200))
        s = rng.integers(0, 12, n).astype(float) if trial % 2 else 1e6 + rng.normal(size=n) * 1e-9  # ties; one-ulp gaps
        y = rng.integers(0, 2, n)
        y[0], y[-1] = 0, 1
        got = _cut_points(torch.from_numpy(s), torch.from_numpy(y))
        assert [g.tolist() for g in got] == [list(map(float, v)) for v in brute_force_cut_points(s.tolist(), y.tolist())]


def test_rank_auroc_against_brute_force_and_torchmetrics():
    rng = np.random.default_rng(4)
    for trial in range(30):
        n = int(rng.integers(4, 60))
        s = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.normal(size=n) * 500
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        a = auroc(s, y)
        assert abs(a - brute_force_auroc(s.tolist(), y.tolist())) < 1e-12
        tm = torch.from_numpy(y)
        assert abs(a - float(binary_auroc(to_unit_interval(torch.from_numpy(s)), tm))) < 1e-6
        # the weighted forms with unit weights are AUROC and AP
        ones0, ones1 = np.ones((1, int((y == 0).sum()))), np.ones((1, int(y.sum())))
        assert abs(_weighted_auroc(s[y == 0], s[y == 1], ones0, ones1)[0] - a) < 1e-12
        ap = float(binary_average_precision(to_unit_interval(torch.from_numpy(s)), tm))
        assert abs(_weighted_ap(s[y == 0], s[y == 1], ones0, ones1)[0] - ap) < 1e-6


def test_weighted_statistics_equal_the_metrics_of_the_replicated_sample():
    rng = np.random.default_rng(5)
    s = rng.integers(0, 8, 40).astype(float)
    y = np.r_[np.zeros(25, int), np.ones(15, int)]
    w_neg, w_pos = stratified_counts(25, 15, 6, rng)
    assert (w_neg.sum(1) == 25).all() and (w_pos.sum(1) == 15).all()  # stratified: class counts kept
    for b in range(6):
        reps = np.r_[np.repeat(np.arange(25), w_neg[b].astype(int)), 25 + np.repeat(np.arange(15), w_pos[b].astype(int))]
        rs, ry = s[reps], y[reps]
        row_neg, row_pos = w_neg[b : b + 1], w_pos[b : b + 1]
        assert abs(_weighted_auroc(s[:25], s[25:], row_neg, row_pos)[0] - brute_force_auroc(rs.tolist(), ry.tolist())) < 1e-12
        ap = float(binary_average_precision(to_unit_interval(torch.from_numpy(rs)), torch.from_numpy(ry)))
        assert abs(_weighted_ap(s[:25], s[25:], row_neg, row_pos)[0] - ap) < 1e-6


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(6)
    s, y = np.r_[rng.normal(size=300), rng.normal(size=100) + 1], np.r_[np.zeros(300), np.ones(100)]
    lo, hi = bootstrap_ci(s, y, "auroc", n_resamples=1000, seed=1)
    assert (lo, hi) == bootstrap_ci(s, y, "auroc", n_resamples=1000, seed=1)
    assert (lo, hi) != bootstrap_ci(s, y, "auroc", n_resamples=1000, seed=2)
    assert lo < auroc(s, y) < hi and 0.05 < hi - lo < 0.2
    ap_lo, ap_hi = bootstrap_ci(s, y, "ap", n_resamples=1000, seed=1)
    ap = float(binary_average_precision(to_unit_interval(torch.from_numpy(s)), torch.from_numpy(y).long()))
    assert ap_lo < ap < ap_hi
    both = bootstrap_statistics(s, y, ("auroc", "ap"), 1000, seed=1)
    assert np.quantile(both["auroc"], 0.025) == lo  # the pair shares its resamples
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(s, y, "f1")


def test_bootstrap_interval_covers_the_true_auroc_at_about_the_nominal_rate(capsys):
    """Issue 16: Gaussian scores, normal N(0, 1) and anomalous N(d, 1): AUROC = Φ(d/√2)."""
    rng = np.random.default_rng(16)
    d, n0, n1, repeats = 1.0, 100, 100, 200
    true = 0.5 * (1 + math.erf(d / math.sqrt(2) / math.sqrt(2)))
    y = np.r_[np.zeros(n0), np.ones(n1)]
    covered = 0
    for r in range(repeats):
        s = np.r_[rng.normal(size=n0), rng.normal(size=n1) + d]
        lo, hi = bootstrap_ci(s, y, "auroc", n_resamples=500, seed=r)
        covered += lo <= true <= hi
    rate, sd = covered / repeats, math.sqrt(0.95 * 0.05 / repeats)
    with capsys.disabled():
        print(f"\nbootstrap 95% interval covered AUROC {true:.4f} in {covered}/{repeats} = {rate:.3f}")
    assert 0.95 - 2.576 * sd <= rate <= 0.95 + 2.576 * sd


def test_random_baseline_interval():
    lo, hi = random_auroc_interval(50, 30)
    sd = math.sqrt(81 / (12 * 50 * 30))
    assert abs(lo - (0.5 - 1.959964 * sd)) < 1e-6 and abs(hi - (0.5 + 1.959964 * sd)) < 1e-6
    rng = np.random.default_rng(7)  # random scores land inside it about 95% of the time
    y = np.r_[np.zeros(50), np.ones(30)]
    inside = sum(lo <= auroc(rng.random(80), y) <= hi for _ in range(2000)) / 2000
    assert abs(inside - 0.95) < 2.576 * math.sqrt(0.95 * 0.05 / 2000)
