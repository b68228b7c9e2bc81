"""Checks of a finished run's own numbers that a user must hear about: a detector that fails on validation.

``weak_detector_warnings`` reads what ``anogan.reporting.report.compute_metrics`` wrote and returns one line
(with the numbers and what to try) when the run's primary score ranks the *validation* images

* below chance: AUROC < 0.5, the score points the wrong way; or
* below the complexity-only baseline on the same validation images (``versus_complexity_baseline``:
  the image's input complexity alone, its direction chosen on validation), i.e. the detector adds
  nothing to how busy an image is.

Validation only, so the line is there before anyone looks at the test split. Every such line starts
with ``WEAK_PREFIX`` (``python -m anogan.reporting.report`` replaces them when it recomputes the metrics).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WEAK_PREFIX = "validation AUROC "
CHANCE = 0.5


def weak_detector_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """One warning line when the validation AUROC of the primary score is below 0.5 or below the
    complexity-only baseline's validation AUROC (``metrics["versus_complexity_baseline"]["val"]``);
    an empty list otherwise, and when validation has no anomaly (no AUROC to judge)."""
    auroc = (metrics.get("val") or {}).get("auroc")
    if auroc is None:
        return []
    baseline = ((metrics.get("versus_complexity_baseline") or {}).get("val") or {}).get("auroc_complexity_only")
    below_chance = auroc < CHANCE
    below_baseline = baseline is not None and auroc < baseline
    if not (below_chance or below_baseline):
        return []
    failed = [f"below chance ({CHANCE})"] if below_chance else []
    if below_baseline:
        failed.append(f"below the complexity-only baseline's {baseline:.4f} (same validation images)")
    against = "" if below_baseline or baseline is None else f" (complexity alone: {baseline:.4f})"
    tries = []
    if metrics.get("correction") == "none":
        tries.append("mapping.correction=auto (divides by the image's complexity when validation prefers it)")
    tries += [
        "a longer GAN training (trainer.max_epochs)",
        "a scorer that reads D (mapping=dcombined with model.self_supervised=rotations, or mapping=dlogit with model.nda)",
        "and read the GAN health line (a collapsed G spoils the scores that use it)",
    ]
    return [
        f"{WEAK_PREFIX}{auroc:.4f} is {' and '.join(failed)}{against}: this detector does not work on these images. "
        f"Try {', '.join(tries)}."
    ]
