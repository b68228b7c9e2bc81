"""``anogan.engine.pipeline.run`` returns what the run folder says, without reading back what it wrote;
``anogan.fit`` returns run()'s result, not the file."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

import anogan
import anogan.engine.pipeline as pipeline
from conftest import tiny_overrides, train_in_process


def _same(value: float, want: float | None) -> bool:
    return math.isnan(value) if want is None else value == want


def test_run_returns_what_metrics_json_says_without_reading_gan_json(tiny_cifar, tmp_path, monkeypatch):
    read_text = Path.read_text

    def no_gan_json(path: Path, *args, **kwargs) -> str:
        assert path.name != "gan.json", f"the run read {path} back"
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_gan_json)
    result = train_in_process([*tiny_overrides(tiny_cifar, tmp_path), "gan.cache=false"])
    monkeypatch.undo()
    run = tmp_path / "run"
    text = (run / "metrics.json").read_text()
    metrics = json.loads(text)
    assert result.run_dir.resolve() == run.resolve()
    assert json.dumps(result.metrics, indent=1) == text  # every key and value, in the file's order
    assert result.metric == "val/auroc" and _same(result.objective, metrics["val"]["auroc"])
    assert result.scorer_file == result.run_dir / "scorer.pt" and result.scorer_file.is_file()
    assert result.gan_source == metrics["gan_source"] == "trained" and result.gan_health == metrics["gan_health"]
    assert result.gan_health["ok"] is not None  # the health check of the GAN trained in this run, passed on
    assert result.primary_score == metrics["primary_score"]
    assert result.warnings[: len(metrics["warnings"])] == tuple(metrics["warnings"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.objective = 1.0  # type: ignore[misc]


def test_fit_returns_the_runs_result_not_the_file(tiny_cifar, tmp_path, monkeypatch):
    """metrics.json is replaced by other content as it is written: fit's metrics must still be the run's."""
    written = []
    write = pipeline.atomic_write_text

    def poisoned(path: Path, text: str) -> None:
        written.append((Path(path).name, text))
        write(path, json.dumps({"poisoned": True}) if Path(path).name == "metrics.json" else text)

    monkeypatch.setattr(pipeline, "atomic_write_text", poisoned)
    overrides = [o for o in tiny_overrides(tiny_cifar, tmp_path) if not o.startswith("hydra.run.dir")]
    fitted = anogan.fit([*overrides, "gan.cache=false"], run_dir=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"poisoned": True}
    (text,) = [t for name, t in written if name == "metrics.json"]
    assert json.dumps(fitted.metrics, indent=1) == text and fitted.metrics["scorer_file"] == "scorer.pt"
    assert _same(fitted.objective, fitted.metrics["val"]["auroc"])
    assert fitted.run_dir == (tmp_path / "run").resolve() and fitted.scorer_file.is_file()


def test_fit_refuses_plan_in_one_line(tiny_cifar, tmp_path):
    overrides = [o for o in tiny_overrides(tiny_cifar, tmp_path) if not o.startswith("hydra.run.dir")]
    with pytest.raises(anogan.ConfigError, match="plan=true"):
        anogan.fit([*overrides, "plan=true"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
