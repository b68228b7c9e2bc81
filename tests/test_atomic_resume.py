"""Crash-safe writes (anogan.utils.io, AtomicCheckpointIO) and exact resume (RandomStateCheckpoint)."""

import errno
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from anogan.engine.callbacks import RandomStateCheckpoint
from anogan.engine.stages import fit_gan
from anogan.models.gan import GAN
from anogan.utils import io as aio
from anogan.utils.errors import WriteError
from conftest import compose_config, tiny_overrides


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_replaces_whole_file_and_keeps_old_one_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    aio.atomic_write_text(target, "old")
    aio.atomic_write_text(target, "new")
    assert target.read_text() == "new"

    def half_then_full_disk(handle):
        handle.write(b"ha")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match=f"disk full writing {target}") as err:
        aio.atomic_write(target, half_then_full_disk)
    assert "\n" not in str(err.value)
    assert target.read_text() == "new" and _no_temp_files(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(aio.tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError, match="is read-only"):
        aio.atomic_write_text(target, "newer")
    assert target.read_text() == "new"


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    """mkstemp makes 0o600 files; a file written atomically must be readable as open(path, "w") makes it."""

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    aio.atomic_write_text(tmp_path / "atomic.txt", "x")
    with aio.atomic_path(tmp_path / "by_path.bin") as tmp:
        tmp.write_bytes(b"x")
    expected = plain.stat().st_mode & 0o777
    assert expected & 0o044  # the test's umask lets group/others read: otherwise it proves nothing
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("atomic.txt", "by_path.bin")] == [expected, expected]


def test_atomic_savefig_and_torch_save(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    aio.atomic_savefig(fig, tmp_path / "f.png", dpi=10)
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    aio.atomic_torch_save({"a": torch.ones(2)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt")["a"], torch.ones(2)) and _no_temp_files(tmp_path)


def test_failure_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A write that dies half way (a kill, a full disk) leaves the last good last.ckpt loadable."""
    data = torch.utils.data.DataLoader([{"image": torch.rand(3, 32, 32) * 2 - 1} for _ in range(8)], batch_size=8)
    model = GAN(latent_dim=8, image_size=32, g_width=4, d_width=4, g_steps=1)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1, enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        callbacks=[ckpt],
        plugins=[aio.AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    last = tmp_path / "last.ckpt"
    before = last.read_bytes()

    real_save = torch.save

    def half_written(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(len(before) // 2)  # the file as a kill would leave it ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... or a full disk

    monkeypatch.setattr(aio.torch, "save", half_written)
    with pytest.raises(WriteError, match="disk full writing .*last.ckpt"):
        trainer.save_checkpoint(last)
    monkeypatch.undo()
    assert last.read_bytes() == before and _no_temp_files(tmp_path)
    assert torch.load(last, weights_only=False, map_location="cpu")["epoch"] == 0


def _train(tiny_cifar, datamodule, run_dir: Path, *extra: str) -> dict:
    """Stage 1 of pipeline.run, in this process: seed, fit_gan; returns the generator's weights.
    (The split does not use the global seed, so one data module serves every run.)"""
    cfg = compose_config(
        [
            *tiny_overrides(tiny_cifar),
            f"paths.output_dir={run_dir}",
            "data.batch_size=8",
            "trainer.limit_train_batches=null",
            "trainer.enable_model_summary=false",
            *extra,
        ]
    )
    L.seed_everything(cfg.seed, workers=True)
    folder, _ = fit_gan(cfg, datamodule, False, run_dir)
    return torch.load(folder / "generator.pt")


@pytest.mark.slow  # about 20 s on 2 idle cores (three short fits)
def test_stopped_and_resumed_training_gives_bit_identical_weights(tiny_cifar, tmp_path):
    """Stopped after epoch 1 of 3 (2 shuffled batches per epoch), resumed with ckpt_path=last."""
    datamodule = instantiate(compose_config([*tiny_overrides(tiny_cifar), "data.batch_size=8"]).data, _convert_="all")
    datamodule.setup("fit")
    full = _train(tiny_cifar, datamodule, tmp_path / "full", "trainer.max_epochs=3")
    _train(tiny_cifar, datamodule, tmp_path / "split", "trainer.max_epochs=1")
    ckpt = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)  # plain tensors and lists
    assert "torch" in ckpt["callbacks"]["RandomStateCheckpoint"]
    resumed = _train(tiny_cifar, datamodule, tmp_path / "split", "trainer.max_epochs=3", "ckpt_path=last")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_random_states_round_trip():
    import random

    import numpy as np

    callback = RandomStateCheckpoint()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = callback.state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    callback.load_state_dict(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and (expected[1] == got[1]).all() and expected[2] == got[2]
