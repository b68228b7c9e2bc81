"""The run's calibration: raw score components -> primary score, p-value, label (one ``nn.Module``).

Fitted once, on the **validation** rows only, by the pipeline (``anogan.engine.pipeline``); saved in the
scorer file (``Calibration.state``); applied unchanged by the report (scores.csv), by ``predict.py``
and inside the exported ONNX graph (anomalib's PostProcessor pattern: the fitted values are
buffers, so they move with the module and are traced into the graph). What it holds:

- ``combine`` (optional): names of score components (keys of the scorer's outputs, e.g.
  ``["residual", "discrimination"]``) whose standardised sum is the raw score. Each component is
  first put on a log scale when it is positive on every validation normal (``log(max(c, 1e-30))``;
  otherwise left as it is), then z-scored with the mean and standard deviation of the
  **validation normals** (a zero deviation counts as 1; on the log scale, a deviation under
  ``LOG_STD_FLOOR`` counts as that floor: a component that varies by less than 1% over the normals
  would otherwise multiply float rounding, about 1e-7 relative, into the score). Without ``combine``
  the raw score is the scorer's own ``score``.
- ``correction``: ``none``, ``complexity`` (raw / input complexity, Serrà et al., ICLR 2020;
  ``anogan.post_processing.scores``) or ``times_complexity`` (raw · complexity); ``auto`` is resolved at fitting
  time to whichever ranks validation best. With ``combine`` the correction acts in the same
  standardised space as the components: log complexity is z-scored on the validation normals too and
  subtracted (``complexity``) or added (``times_complexity``), since a sum of z-scores can be negative
  and dividing it would turn rankings over.
- the thresholds of every rule (``anogan.metrics.image.fit_thresholds``), the run's ``rule`` and
  ``target_fpr``, and the validation normals' primary scores (sorted), against which
  p = (1 + #{normals >= score}) / (n + 1) (conformal; Bates et al., Ann. Statist. 2023).

``warnings`` says, in one line with the fix, when the target false-positive rate cannot be reached
with this many validation normals (the ``fpr`` threshold is then infinite and flags nothing).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anogan.config.choices import CORRECTIONS, RESOLVED_CORRECTIONS, THRESHOLD_RULES
from anogan.metrics.image import fit_thresholds, min_normals_for_fpr, ranking_metrics, resolve_threshold
from anogan.metrics.stats import conformal_p_values
from anogan.post_processing.scores import COMPLEXITY_FLOOR, corrected_score, neighbour_difference, times_complexity_score
from anogan.utils.errors import CalibrationError

THRESHOLD_KEYS = ("fpr", "fpr_target", "fpr_observed", "f1", "f1_value", "youden", "youden_value")
LOG_FLOOR = 1e-30
LOG_STD_FLOOR = 0.01  # the smallest spread of a log-scaled component or of log complexity a combined score divides by


def complexity_of_model_input(x: torch.Tensor) -> torch.Tensor:
    """Input complexity (``anogan.post_processing.scores.complexity``) of model inputs x (N×C×S×S in
    [-1, 1], uint8 / 127.5 − 1), float64 (N,): the uint8 values are recovered by rounding
    (x + 1) · 127.5 (exact for such inputs; other values count as the nearest grey level), then the
    same float64 formula, so it equals the complexity of the uint8 images up to summation order
    (about 1e-15 relative; in float32 the two differed by up to 7e-7, which the z-scored log
    complexity of a combined score multiplies by up to 1 / ``LOG_STD_FLOOR``).
    Traceable: the exported graph computes it from its input."""
    return neighbour_difference(((x.double() + 1) * 127.5).round() / 255.0)


def primary_score(
    raw: torch.Tensor, image_complexity: torch.Tensor, correction: str, log_stats: tuple[float, float] | None = None
) -> torch.Tensor:
    """The score thresholds and metrics use (float64), as ``correction`` (``none`` | ``complexity`` |
    ``times_complexity``) says. ``log_stats`` (mean, std of log complexity on the validation normals):
    the raw score is a sum of z-scores (``combine``), and the correction adds or subtracts the
    z-scored log complexity instead of multiplying or dividing."""
    if correction == "none":
        return raw.double()
    if correction not in RESOLVED_CORRECTIONS:
        raise ValueError(
            f"mapping.correction={correction!r} is not a resolved correction; use one of {', '.join(RESOLVED_CORRECTIONS)}"
        )
    if log_stats is not None:
        z = (image_complexity.double().clamp_min(COMPLEXITY_FLOOR).log() - log_stats[0]) / log_stats[1]
        return raw.double() - z if correction == "complexity" else raw.double() + z
    if correction == "complexity":
        return corrected_score(raw, image_complexity)
    return times_complexity_score(raw, image_complexity)


def resolve_auto(
    raw: torch.Tensor, image_complexity: torch.Tensor, labels: torch.Tensor, log_stats: tuple[float, float] | None = None
) -> str:
    """The resolved correction with the highest AUROC on these (validation) images (ties: the first of
    none, complexity, times_complexity). Raises ``OneClassSplitError`` when they are all of one class."""
    auroc = {
        c: ranking_metrics(primary_score(raw, image_complexity, c, log_stats), labels, "the validation split")["auroc"]
        for c in RESOLVED_CORRECTIONS
    }
    return max(RESOLVED_CORRECTIONS, key=lambda c: (auroc[c], -RESOLVED_CORRECTIONS.index(c)))


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


class Calibration(nn.Module):
    """Fitted post-processing of a scorer's outputs (module docstring). Build with ``fit`` (the
    pipeline) or ``from_state`` (a scorer file); apply with ``forward``.

    Buffers (float64 unless said): ``normal_scores`` (n,) sorted validation-normal primary scores;
    ``rule_thresholds`` (3,) the fpr / f1 / youden thresholds (NaN: not fitted); ``threshold`` ()
    the run's rule's; ``combine_mean``, ``combine_std`` (k,) and ``combine_log`` (k,) bool, for the
    ``k`` combined components (empty without ``combine``); ``complexity_stats`` (2,) mean and std of
    log complexity on the validation normals (NaN without ``combine``, and in scorer files written
    before it existed, whose combined score is divided by complexity as it was then). Scores are compared in float64: move
    it with ``.to(device)``, but do not cast it (``.float()``/``.half()`` on a parent module would
    round the thresholds and the normals' scores, and ties would flip).
    """

    normal_scores: torch.Tensor
    rule_thresholds: torch.Tensor
    threshold: torch.Tensor
    combine_mean: torch.Tensor
    combine_std: torch.Tensor
    combine_log: torch.Tensor
    complexity_stats: torch.Tensor

    def __init__(
        self,
        correction: str,
        rule: str | float,
        target_fpr: float,
        thresholds: dict,
        normal_scores: torch.Tensor,
        combine: list[str] | None = None,
        combine_mean: torch.Tensor | None = None,
        combine_std: torch.Tensor | None = None,
        combine_log: torch.Tensor | None = None,
        complexity_stats: torch.Tensor | None = None,
    ):
        super().__init__()
        if correction not in RESOLVED_CORRECTIONS:
            raise ValueError(f"correction={correction!r}: a fitted calibration holds one of {', '.join(RESOLVED_CORRECTIONS)}")
        self.correction = correction
        self.rule = rule if isinstance(rule, str) else float(rule)
        self.target_fpr = float(target_fpr)
        self.combine = list(combine) if combine else None
        self.threshold_stats = {k: thresholds.get(k) for k in THRESHOLD_KEYS}
        if self.threshold_stats["fpr_target"] is None:  # thresholds given as the three rules only
            self.threshold_stats["fpr_target"] = self.target_fpr
        fpr = thresholds.get("fpr")
        if self.threshold_stats["fpr_observed"] is None and fpr is not None and len(normal_scores):
            self.threshold_stats["fpr_observed"] = float((torch.as_tensor(normal_scores).double() >= fpr).double().mean())
        k = len(self.combine or [])
        self.register_buffer("normal_scores", torch.sort(torch.as_tensor(normal_scores, dtype=torch.float64).flatten()).values)
        self.register_buffer(
            "rule_thresholds", torch.tensor([_nan_if_none(thresholds.get(r)) for r in THRESHOLD_RULES], dtype=torch.float64)
        )
        self.register_buffer("threshold", torch.tensor(resolve_threshold(self.thresholds, self.rule), dtype=torch.float64))
        self.register_buffer(
            "combine_mean", torch.zeros(k, dtype=torch.float64) if combine_mean is None else combine_mean.double()
        )
        self.register_buffer("combine_std", torch.ones(k, dtype=torch.float64) if combine_std is None else combine_std.double())
        self.register_buffer("combine_log", torch.zeros(k, dtype=torch.bool) if combine_log is None else combine_log.bool())
        stats = torch.full((2,), math.nan, dtype=torch.float64) if complexity_stats is None else complexity_stats.double()
        self.register_buffer("complexity_stats", stats)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        components: dict[str, torch.Tensor] | torch.Tensor,
        complexity: torch.Tensor,
        labels: torch.Tensor,
        correction: str = "none",
        rule: str | float = "fpr",
        target_fpr: float = 0.05,
        combine: list[str] | None = None,
    ) -> Calibration:
        """Fit on **validation rows only**: ``components`` (the scorer's outputs, each shape (n,),
        or the raw score itself), ``complexity`` (n,) (``anogan.post_processing.scores.complexity``), ``labels``
        (n,) 0 normal / 1 anomalous. ``correction``: none | complexity | times_complexity | auto. Raises
        ``CalibrationError`` without validation normals, ``OneClassSplitError`` for ``auto`` on
        one class, ``ThresholdRuleError`` for a ``rule`` this split cannot fit, ``ValueError`` for a
        ``combine`` name the scorer does not output."""
        if correction not in CORRECTIONS:
            raise ValueError(f"mapping.correction={correction!r}: use one of {', '.join(CORRECTIONS)}")
        labels = torch.as_tensor(labels).long().flatten()
        normal = labels == 0
        if not normal.any():
            raise CalibrationError("the validation split has no normal image: calibration (p-values, thresholds) needs some")
        mean = std = log = None
        if combine:
            if not isinstance(components, dict):
                raise ValueError("combine needs the scorer's named components, not one raw score")
            missing = [c for c in combine if c not in components]
            if missing:
                raise ValueError(f"combine names {missing}, which the scorer does not output (it has {sorted(components)})")
            stacked = torch.stack([components[c].double().flatten()[normal] for c in combine], 1)
            log = (stacked > 0).all(0)
            stacked = torch.where(log, stacked.clamp_min(LOG_FLOOR).log(), stacked)
            mean, std = stacked.mean(0), stacked.std(0, correction=0)
            std = torch.where(log, std.clamp_min(LOG_STD_FLOOR), torch.where(std > 0, std, torch.ones_like(std)))
            log_c = torch.as_tensor(complexity).double().flatten()[normal].clamp_min(COMPLEXITY_FLOOR).log()
            # a spread under LOG_STD_FLOOR counts as that floor: near-identical complexities
            # must not turn rounding differences into large score differences
            c_std = log_c.std(correction=0).clamp_min(LOG_STD_FLOOR)
            stats = torch.stack([log_c.mean(), c_std])
        provisional = cls("none", math.inf, target_fpr, {}, torch.zeros(0), combine, mean, std, log, stats if combine else None)
        raw = provisional.raw_score(components)
        if correction == "auto":
            correction = resolve_auto(raw, complexity, labels, provisional.log_stats)
        score = primary_score(raw, complexity, correction, provisional.log_stats)
        thresholds = fit_thresholds(score, labels, target_fpr)
        return cls(correction, rule, target_fpr, thresholds, score[normal], combine, mean, std, log, stats if combine else None)

    # ------------------------------------------------------------------ applying
    def raw_score(self, components: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The raw score (float64): the combined components, or the scorer's ``score``."""
        if not isinstance(components, dict):
            return components.double()
        if not self.combine:
            return components["score"].double()
        stacked = torch.stack([components[c].double().flatten() for c in self.combine], 1)
        stacked = torch.where(self.combine_log, stacked.clamp_min(LOG_FLOOR).log(), stacked)
        return ((stacked - self.combine_mean) / self.combine_std).sum(1)

    def p_values(self, score: torch.Tensor) -> torch.Tensor:
        """Conformal p-values (float64) of primary scores against the validation normals; NaN without any."""
        n = self.normal_scores.numel()
        if torch.onnx.is_in_onnx_export():  # no searchsorted in ONNX: count by comparison, same formula
            above = (self.normal_scores[None, :] >= score[:, None]).to(torch.float64).sum(1)
            return (1.0 + above) / (n + 1.0)
        if n == 0:
            return torch.full_like(score, math.nan)
        return conformal_p_values(self.normal_scores, score)

    def forward(
        self,
        components: dict[str, torch.Tensor] | torch.Tensor,
        complexity: torch.Tensor,
        rule: str | float | None = None,
    ) -> dict[str, torch.Tensor]:
        """``components``: the scorer's outputs (each (N,)) or the raw score (N,); ``complexity`` (N,)
        (``anogan.post_processing.scores.complexity`` or ``complexity_of_model_input``); ``rule``: another
        threshold rule or a number (default the run's). Returns float64 ``raw_score``, ``score``
        (primary), ``p_value``, ``threshold`` () and ``label`` (N,) int64, 1 = anomalous
        (``score >= threshold``). Raises ``ThresholdRuleError`` for a rule this run could not fit."""
        raw = self.raw_score(components)
        score = primary_score(raw, complexity, self.correction, self.log_stats)
        threshold = (
            self.threshold if rule is None else torch.tensor(resolve_threshold(self.thresholds, rule), dtype=torch.float64)
        )
        return {
            "raw_score": raw,
            "score": score,
            "p_value": self.p_values(score),
            "threshold": threshold,
            "label": (score >= threshold).long(),
        }

    # ------------------------------------------------------------------ what it holds
    @property
    def log_stats(self) -> tuple[float, float] | None:
        """(mean, std) of log complexity on the validation normals where the correction acts on a
        combined score; None otherwise (and for scorer files written before it existed)."""
        if torch.isnan(self.complexity_stats).any():
            return None
        return float(self.complexity_stats[0]), float(self.complexity_stats[1])

    @property
    def thresholds(self) -> dict:
        """Every rule's threshold and what it reached (``fit_thresholds``' keys; None: not fitted)."""
        values = {r: (None if math.isnan(v) else v) for r, v in zip(THRESHOLD_RULES, self.rule_thresholds.tolist())}
        return {**self.threshold_stats, **values}

    @property
    def target_unreachable(self) -> bool:
        """True when ``target_fpr`` needs more validation normals than there are (fpr threshold = inf)."""
        return math.isinf(self.rule_thresholds[0].item())

    @property
    def warnings(self) -> list[str]:
        """One line per problem a user must hear about, each naming the fix (empty when none)."""
        if not self.target_unreachable:
            return []
        n, needed = self.normal_scores.numel(), min_normals_for_fpr(self.target_fpr)
        return [
            f"threshold.target_fpr={self.target_fpr:g} is unreachable with {n} validation normals (at least {needed} "
            f"are needed): the fpr threshold is infinite, so it flags no image, and no p-value is below {1 / (n + 1):.3g}. "
            "Fix: give more normal images, raise data.val_fraction, or raise threshold.target_fpr "
            f"(>= {1 / (n + 1):.3g} with these normals)."
        ]

    def state(self) -> dict:
        """Plain values and tensors for the scorer file (``anogan.engine.artifact``); ``from_state`` inverts it."""
        return {
            "correction": self.correction,
            "threshold_rule": self.rule,
            "target_fpr": self.target_fpr,
            "thresholds": self.thresholds,
            "normal_scores": self.normal_scores.clone(),
            "combine": None
            if not self.combine
            else {
                "components": list(self.combine),
                "mean": self.combine_mean.clone(),
                "std": self.combine_std.clone(),
                "log": self.combine_log.clone(),
                "complexity_stats": self.complexity_stats.clone(),
            },
        }

    @classmethod
    def from_state(cls, state: dict) -> Calibration:
        """The calibration a scorer file holds (``state``'s dict)."""
        combine = state.get("combine") or {}
        return cls(
            state["correction"],
            state["threshold_rule"],
            state["target_fpr"],
            state["thresholds"],
            state["normal_scores"],
            combine.get("components"),
            combine.get("mean"),
            combine.get("std"),
            combine.get("log"),
            combine.get("complexity_stats"),
        )

    def extra_repr(self) -> str:
        return f"correction={self.correction}, rule={self.rule}, target_fpr={self.target_fpr:g}, combine={self.combine}"
