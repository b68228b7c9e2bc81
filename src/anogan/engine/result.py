"""What a finished run returns (``anogan.engine.pipeline.run``, ``anogan.fit``): a light module, so that
the Python API can name the type without importing the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunResult:
    """A finished run, as its files say it: ``run_dir``; ``metrics``, what its metrics.json holds
    (equal to ``json.loads`` of the file); ``metric``, the ``optimized_metric`` (``val/auroc``) and
    ``objective``, its value (NaN where the run has none, e.g. no anomalous validation image);
    ``scorer_file``, the path of its scorer.pt."""

    run_dir: Path
    metrics: dict[str, Any]
    metric: str
    objective: float
    scorer_file: Path

    @property
    def gan_source(self) -> str:
        """Where the GAN came from: ``trained``, ``cache <key>``, ``weights <path>`` or ``checkpoint <path>``."""
        return str(self.metrics["gan_source"])

    @property
    def gan_health(self) -> dict:
        """The health check of the GAN's training (``ok``, ``warning``, ...; ``ok`` None where unknown)."""
        return dict(self.metrics["gan_health"])

    @property
    def primary_score(self) -> str:
        """The name of the score that scores.csv's ``score`` column and the thresholds use (``raw_score``, ...)."""
        return str(self.metrics["primary_score"])

    @property
    def warnings(self) -> tuple[str, ...]:
        """Every warning the run logged about its result: calibration, weak detector, GAN health."""
        health = self.gan_health.get("warning")
        return (*self.metrics["warnings"], *([health] if health else []))
