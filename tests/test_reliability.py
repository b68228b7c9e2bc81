"""Bad input fails fast and clearly; interruption loses nothing; divergence is caught; runs repeat."""

import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from anogan.config.checks import check_config
from anogan.engine import gan_store
from anogan.engine.stages import given_gan
from anogan.models.dcgan import Discriminator, Generator
from anogan.models.gan import GAN
from anogan.utils.errors import DivergenceError, UserError
from conftest import REPO, compose_config, run_train, tiny_overrides


@pytest.fixture(scope="module")
def gan_folder(tmp_path_factory):
    """A GAN folder as the training stage writes it (random weights: no training needed)."""
    arch = {"latent_dim": 16, "channels": 3, "image_size": 32, "g_width": 8, "d_width": 8}
    folder = tmp_path_factory.mktemp("gan")
    gan_store.save_gan(Generator(16, 3, 32, 8), Discriminator(3, 32, 8), arch, folder)
    return folder


BAD_CONFIGS = [
    (["mapping.alpha=1.5"], "mapping.alpha=1.5"),
    (["mapping.alpha=-0.1"], "[0, 1]"),
    (["data.normal_class=unicorn"], "data.normal_class='unicorn'"),
    (["data.normal_class=10"], "use 0-9"),
    (["data.image_size=48"], "data.image_size=48"),
    (["data.channels=2"], "data.channels=2"),
    (["data.protocol=nope"], "seed, one_class"),
    (["mapping.iterations=0"], "mapping.iterations=0"),
    (["mapping.correction=jpeg"], "none, complexity"),
    (["model.latent_dim=0"], "model.latent_dim=0"),
    (["data.test_subset=-5"], "data.test_subset=-5"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0"),
    (["data.root=/no/such/folder", "data.download=false"], "no cifar-10-batches-py"),
    (["gan.checkpoint=/no/such.ckpt"], "gan.checkpoint='/no/such.ckpt'"),
    (["gan.generator=/no/g.pt"], "go together"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS, ids=[o[0][0] for o in BAD_CONFIGS])
def test_bad_config_names_key_value_and_fix(overrides, message, tiny_cifar):
    cfg = compose_config([*tiny_overrides(tiny_cifar), *overrides])
    with pytest.raises(UserError) as err:
        check_config(cfg)
        given_gan(cfg)
    assert message in str(err.value)


def test_checkpoint_that_does_not_match_the_model(gan_folder, tiny_cifar, tmp_path):
    cfg = compose_config([*tiny_overrides(tiny_cifar), f"gan.checkpoint={gan_folder}", "model.latent_dim=32"])
    check_config(cfg)
    with pytest.raises(UserError, match="latent_dim: checkpoint 16 vs config 32"):
        given_gan(cfg)
    not_a_ckpt = tmp_path / "junk.ckpt"
    not_a_ckpt.write_text("hello")
    cfg = compose_config([*tiny_overrides(tiny_cifar), f"gan.checkpoint={not_a_ckpt}"])
    with pytest.raises(UserError, match="not a Lightning checkpoint"):
        given_gan(cfg)


def test_bad_config_on_the_command_line_prints_one_message_no_traceback(tiny_cifar, tmp_path):
    proc = run_train([*tiny_overrides(tiny_cifar, tmp_path), "mapping.alpha=2"], check=False)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "mapping.alpha=2" in out and "Traceback" not in out
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before training


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    class PoisonedAfter(torch.utils.data.Dataset):
        """Clean images for the first epoch, NaN afterwards."""

        def __init__(self):
            self.calls = 0

        def __len__(self):
            return 8

        def __getitem__(self, i):
            self.calls += 1
            x = torch.rand(3, 32, 32) * 2 - 1
            return {"image": x if self.calls <= 8 else x * float("nan")}

    model = GAN(latent_dim=8, image_size=32, g_width=4, d_width=4, g_steps=1)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1, enable_version_counter=False)
    trainer = L.Trainer(max_epochs=3, logger=False, callbacks=[ckpt], enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(DivergenceError, match="diverged"):
        trainer.fit(model, torch.utils.data.DataLoader(PoisonedAfter(), batch_size=8))
    kept = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert kept["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_same_seed_same_scores(tiny_cifar, tmp_path):
    for name in ("a", "b"):
        run_train([*tiny_overrides(tiny_cifar, tmp_path / name), "gan.cache=false"])
    a, b = ((tmp_path / n / "run" / "scores.csv").read_text() for n in ("a", "b"))
    assert a == b and len(a.splitlines()) > 10


def _final_step(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["global_step"], ckpt["epoch"]


def test_sigterm_during_training_exits_143_and_leaves_the_run_unfinished(tiny_cifar, tmp_path):
    """Lightning turns SIGTERM into SystemExit() (exit code 0): a scheduler would take the run for finished."""
    run_dir = tmp_path / "stopped"
    common = [*tiny_overrides(tiny_cifar), "trainer.max_epochs=1000", "gan.cache=false", f"paths.log_dir={tmp_path}"]
    cmd = [sys.executable, str(REPO / "train.py"), *common, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be stopped"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert not (run_dir / "metrics.json").exists()
    assert "stopped by SIGTERM: the run is not finished" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(tiny_cifar, tmp_path):
    common = [*tiny_overrides(tiny_cifar), "trainer.max_epochs=12", "trainer.limit_train_batches=null", "gan.cache=false"]
    run_train([*common, f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/full"])

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "train.py"), *common, f"paths.log_dir={tmp_path}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():  # killed right after its first checkpoint
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    interrupted_step, _ = _final_step(run_dir)

    run_train([*common, f"paths.log_dir={tmp_path}", f"hydra.run.dir={run_dir}", "ckpt_path=last"])
    assert interrupted_step < _final_step(run_dir)[0]
    assert _final_step(run_dir) == _final_step(tmp_path / "full")
    assert (run_dir / "metrics.json").exists()
    # exact resume (RandomStateCheckpoint): the same generator, bit for bit, and the same scores
    full_g = torch.load(tmp_path / "full" / "gan" / "generator.pt")
    resumed_g = torch.load(run_dir / "gan" / "generator.pt")
    assert all(torch.equal(full_g[k], resumed_g[k]) for k in full_g)
    assert (run_dir / "scores.csv").read_text() == (tmp_path / "full" / "scores.csv").read_text()
