"""One folder holds one run: finished or different runs are refused, overwrite=true clears only
the project's files, and a run that fails early leaves no empty folder behind."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from anogan.engine.run_folder import check_run_folder, is_fresh, removed_if_unused
from anogan.engine.run_info import write_run_info
from anogan.utils.errors import RunFolderError
from conftest import compose_config, tiny_overrides


def _cfg(tiny_cifar, run_dir, *extra):
    cfg = compose_config([*tiny_overrides(tiny_cifar), f"paths.output_dir={run_dir}", *extra])
    with_hydra = OmegaConf.to_container(cfg)
    with_hydra.pop("hydra")  # what the job sees
    return OmegaConf.create(with_hydra)


def _hydra_start(run_dir):
    """What Hydra writes before our code runs."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("{}")
    (run_dir / "train.log").write_text("")


def _finished_run(tiny_cifar, run_dir, *extra):
    _hydra_start(run_dir)
    write_run_info(_cfg(tiny_cifar, run_dir, *extra), run_dir)
    for folder in ("gan", "checkpoints", "samples", "tensorboard", "figures"):
        (run_dir / folder).mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / "scores.csv").write_text("id\n")


def test_fresh_folder_is_accepted(tiny_cifar, tmp_path):
    run_dir = tmp_path / "run"
    _hydra_start(run_dir)
    assert is_fresh(run_dir)
    check_run_folder(_cfg(tiny_cifar, run_dir), run_dir)


def test_finished_run_is_refused_with_the_three_choices(tiny_cifar, tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(tiny_cifar, run_dir)
    with pytest.raises(RunFolderError, match="holds a finished run") as err:
        check_run_folder(_cfg(tiny_cifar, run_dir), run_dir)
    message = str(err.value)
    assert "\n" not in message and all(c in message for c in ("ckpt_path=last", "hydra.run.dir=", "overwrite=true"))
    check_run_folder(_cfg(tiny_cifar, run_dir, "ckpt_path=last", "trainer.max_epochs=5"), run_dir)  # resume / extend


def test_different_run_is_refused_naming_the_difference(tiny_cifar, tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(tiny_cifar, run_dir)
    for extra in ([], ["ckpt_path=last"]):
        with pytest.raises(RunFolderError, match=r"holds a different run \(seed: 0 -> 1\)"):
            check_run_folder(_cfg(tiny_cifar, run_dir, "seed=1", *extra), run_dir)


def test_unfinished_run_needs_resume_or_overwrite(tiny_cifar, tmp_path):
    run_dir = tmp_path / "run"
    _hydra_start(run_dir)
    write_run_info(_cfg(tiny_cifar, run_dir), run_dir)
    check_run_folder(_cfg(tiny_cifar, run_dir), run_dir)  # only the config: nothing to lose
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="unfinished run"):
        check_run_folder(_cfg(tiny_cifar, run_dir), run_dir)
    check_run_folder(_cfg(tiny_cifar, run_dir, "ckpt_path=last"), run_dir)


def test_overwrite_removes_only_the_projects_files(tiny_cifar, tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(tiny_cifar, run_dir)
    (run_dir / "my_notes.txt").write_text("keep me")
    check_run_folder(_cfg(tiny_cifar, run_dir, "seed=1", "overwrite=true"), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "my_notes.txt", "train.log"]


def test_failed_run_leaves_no_empty_folder(tmp_path):
    run_dir = tmp_path / "run"
    _hydra_start(run_dir)
    with pytest.raises(SystemExit), removed_if_unused(run_dir):
        (run_dir / "config_resolved.yaml").write_text("seed: 0\n")
        raise SystemExit(2)
    assert not run_dir.exists()

    kept = tmp_path / "kept"  # a folder that held something else before the run: never removed
    _hydra_start(kept)
    (kept / "my_notes.txt").write_text("mine")
    with pytest.raises(ValueError), removed_if_unused(kept):
        raise ValueError
    assert (kept / "my_notes.txt").is_file()

    useful = tmp_path / "useful"  # a run that got as far as a checkpoint keeps it
    _hydra_start(useful)
    with pytest.raises(KeyboardInterrupt), removed_if_unused(useful):
        (useful / "checkpoints").mkdir()
        raise KeyboardInterrupt
    assert (useful / "checkpoints").is_dir()
