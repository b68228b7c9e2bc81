"""Cost estimates, plan=true, progress lines in a log, and the precision that follows the hardware."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from anogan.engine import estimate, hardware, probe
from anogan.utils.progress import duration
from conftest import compose_config, tiny_overrides, train_in_process

# The tiny CIFAR folder (conftest) holds 20 cars for training and 100 test images; one_class holds
# 10% of the cars out for validation (2) plus 9 anomalies per validation normal (18): train 18,
# val 20, test 100. At data.batch_size=16 the training loader drops the last partial batch: 1 batch.
TINY_SPLITS = {"train": 18, "val": 20, "test": 100}


def _messages(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_plan_lists_splits_and_steps_and_writes_nothing(tiny_cifar, tmp_path, caplog):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)  # what Hydra creates before the job starts
    (run_dir / ".hydra" / "config.yaml").write_text("{}\n")
    overrides = tiny_overrides(tiny_cifar, tmp_path, mapping="encoder") + ["plan=true", "trainer.max_epochs=3"]
    with caplog.at_level(logging.INFO, logger="anogan"):
        train_in_process(overrides)
    lines = _messages(caplog, "anogan.engine.estimate")
    assert f"plan: run folder {run_dir}" in lines
    assert "plan: splits train 18, val 20, test 100" in lines
    # GAN: 3 epochs x 1 batch; encoder: mapping.epochs=2 x 1 batch; scoring: every val + test image
    assert any(re.match(r"estimate: GAN: 3 epochs × 1 batches \(32 px, batch 16, 32\) ≈ \S+ on this CPU$", m) for m in lines), (
        lines
    )
    assert any(re.match(r"estimate: encoder: 2 epochs × 1 batches ≈ \S+ on this CPU", m) for m in lines), lines
    assert any(re.match(r"estimate: scoring: 120 images \(f-AnoGAN encoder, one forward pass\) ≈ \S+", m) for m in lines), lines
    assert not run_dir.exists()  # the folder Hydra made for the plan is gone
    assert list(tmp_path.iterdir()) == []  # no GAN cache, no run folder, nothing


def test_estimate_counts_steps_and_leaves_the_random_state_alone(tiny_cifar, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from anogan.engine.stages import trainer_kwargs

    cfg = compose_config(tiny_overrides(tiny_cifar, tmp_path, mapping="encoder_search") + ["trainer.max_epochs=4"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    torch.manual_seed(123)
    want = torch.rand(5)
    torch.manual_seed(123)
    phases = {p.name: p for p in estimate.estimate_run(cfg, datamodule, trainer_kwargs(cfg))}
    assert torch.equal(torch.rand(5), want)  # the probes drew from a forked stream
    assert phases["GAN"].steps == 4 and phases["encoder"].steps == 1  # mapping.encoder.epochs=1
    assert phases["scoring"].steps == 120 and "encoder + 2 search steps" in phases["scoring"].what
    assert all(p.seconds > 0 for p in phases.values())
    total = estimate.total_seconds(list(phases.values()))
    assert total == pytest.approx(sum(p.seconds for p in phases.values()))


def test_over_an_hour_on_a_cpu_warns_with_the_cheaper_choices(caplog):
    phases = [estimate.Phase("GAN", "200 epochs × 32 batches", 6400, 5000.0), estimate.Phase("scoring", "x", 10, 100.0)]
    kw = {"accelerator": "cpu"}
    with caplog.at_level(logging.INFO, logger="anogan"):
        lines = estimate.report(phases, kw, experiment="cifar_car")
    assert lines[-1] == "total ≈ 1h25m on this CPU"
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "experiment=cifar_car_cpu" in warning[0] and "trainer=gpu" in warning[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="anogan"):
        estimate.report(phases, kw, experiment="cifar_car_cpu")
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "trainer.max_epochs" in warning[0] and "experiment=" not in warning[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="anogan"):
        estimate.report(phases[1:], kw)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_phase_that_cannot_be_estimated_says_why_and_the_total_names_it():
    bank = "not estimated: the memory bank is built from the training images first"
    phases = [
        estimate.Phase("GAN", "4 epochs × 35 batches", 140, 90.0),
        estimate.Phase("scoring", "3000 images (kNN)", 3000, None, bank),
    ]
    lines = estimate.report(phases, {"accelerator": "cpu"})
    assert lines == [
        "GAN: 4 epochs × 35 batches ≈ 1m30s on this CPU",
        f"scoring: 3000 images (kNN): {bank}",
        "total ≈ 1m30s on this CPU without scoring (not estimated)",
    ]


def test_a_run_logged_to_a_file_has_progress_lines_for_every_phase_and_no_carriage_returns(tiny_cifar, tmp_path, caplog, capfd):
    overrides = tiny_overrides(tiny_cifar, tmp_path, mapping="encoder_search") + ["trainer.enable_progress_bar=true"]
    with caplog.at_level(logging.INFO, logger="anogan"):
        train_in_process(overrides)  # pytest captures stdout: not a terminal
    lines = _messages(caplog, "anogan.utils.progress")
    # the first and the last batch of each phase at least (1 batch: one line)
    assert any(re.match(r"GAN training: 1/1 batches \(epoch 1/1\), \S+ elapsed", m) for m in lines), lines
    assert any(re.match(r"encoder training: 1/1 batches \(epoch 1/1\), \S+ elapsed", m) for m in lines), lines
    assert any(
        re.match(r"Scoring 120 evaluation images \(encoder \+ 2 search steps\): 4/4 batches, \S+ elapsed", m) for m in lines
    ), lines
    estimates = _messages(caplog, "anogan.engine.estimate")
    assert [m.split(":")[1].strip() for m in estimates] == [
        "GAN",
        "encoder",
        "scoring",
        "total ≈ " + estimates[-1].split("≈ ")[1],
    ]
    out, err = capfd.readouterr()
    assert "\r" not in out + err


def test_duration_is_short_and_human():
    assert [duration(s) for s in (4.4, 200, 3599, 3600 * 8.4)] == ["4s", "3m20s", "59m59s", "8h24m"]


@pytest.mark.parametrize(("native", "want"), [(True, "bf16-mixed"), (False, "32-true")])
def test_precision_auto_follows_native_bf16_on_a_cpu(monkeypatch, native, want):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert hardware.resolve_precision("auto", "cpu") == want
    assert hardware.resolve_precision("32", "cpu") == "32"  # an explicit choice is kept
    assert hardware.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_the_bf16_warning_is_silent_with_native_bf16_and_measured_without(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda: 3.0)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING):
        assert hardware.warn_if_slow_bf16("bf16-mixed", "cpu") is None
    assert not caplog.records
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert hardware.warn_if_slow_bf16("bf16-mixed", "cpu") == 3.0
    assert "3.0x slower" in caplog.records[0].getMessage() and "trainer.precision=32" in caplog.records[0].getMessage()
    assert hardware.warn_if_slow_bf16("32-true", "cpu") is None


def test_probe_costs_extend_along_the_line_through_two_batch_sizes():
    # 1.0 s fixed + 0.05 s per image, measured at 16 and 32 images: 7.4 s at 128
    assert probe.extrapolate(1.8, 2.6, 16, 32, 128) == pytest.approx(7.4)
    assert probe.extrapolate(2.6, 2.4, 16, 32, 128) == pytest.approx(2.4 * 4)  # a falling line: proportional
    assert probe.batch_seconds(lambda n: 1.0 + 0.05 * n, 128) == pytest.approx(7.4)
    assert probe.batch_seconds(lambda n: 0.1 * n, 8) == pytest.approx(0.8)  # a batch below the probe sizes
