"""The training limits a user can set mean what a user expects under the GAN's manual
optimization (trainer.max_steps = GAN iterations, i.e. batches; limit_train_batches = batches per
epoch), or are refused in one line (tests/test_bad_inputs.py); the short-training warning counts what
will really run."""

from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate

from anogan.data.training_steps import training_steps_warning
from anogan.engine.callbacks import GANIterationLimit
from anogan.models.gan import GAN
from conftest import compose_config, tiny_overrides


class CountBatches(L.Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1


def test_max_steps_counts_gan_iterations_not_optimizer_steps():
    """3 GAN iterations with g_steps=3 are 3 batches (3 D + 9 G optimizer steps), across epochs of 2 batches;
    Lightning's own max_steps=3 stopped after 1 batch (it counts every optimizer step)."""
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.DataLoader([{"image": torch.rand(3, 32, 32, generator=g) * 2 - 1} for _ in range(8)], batch_size=4)
    model = GAN(latent_dim=16, image_size=32, g_width=8, d_width=8, g_steps=3)
    count = CountBatches()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[GANIterationLimit(3), count],
    )
    trainer.fit(model, data)
    assert count.batches == 3  # the 2nd epoch stopped after its 1st batch
    assert trainer.global_step == 3 * (1 + 3)  # what Lightning counts: every D and G step


def test_the_pipeline_trains_max_steps_gan_iterations(tiny_cifar, tmp_path):
    """stages.fit_gan with trainer.max_steps=3 (issue 30: +trainer.max_steps=8 trained 2 batches): the tiny
    data has 1 batch per epoch, so 3 epochs of 1 batch run, out of max_epochs=5."""
    from anogan.engine.stages import fit_gan, trainer_kwargs

    run = tmp_path / "run"
    cfg = compose_config(
        [
            *tiny_overrides(tiny_cifar),
            "trainer.max_epochs=5",
            "trainer.max_steps=3",
            "trainer.limit_train_batches=null",
            f"paths.output_dir={run}",
            "model.selection.every_n_epochs=null",
        ]
    )
    assert "max_steps" not in trainer_kwargs(cfg)  # never Lightning's optimizer-step limit (nor the encoder's)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1
    fit_gan(cfg, dm, [], run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    done = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    assert done == 3 and ckpt["global_step"] == 3 * (1 + cfg.model.g_steps)
    assert sorted(p.name for p in (run / "samples").glob("*.png"))[-1] == "epoch_0002.png"  # the last epoch's grid


def test_the_short_training_warning_counts_what_will_run():
    """142 images in batches of 35 (4 per epoch) for 200 epochs = 800 iterations: enough, unless
    trainer.max_steps or trainer.limit_train_batches cut it (issue 30: the warning ignored max_steps)."""
    assert training_steps_warning(142, 35, 200) is None
    capped = training_steps_warning(142, 35, 200, max_steps=8)
    assert capped is not None and "only 8 GAN iterations (trainer.max_steps=8" in capped and "raise trainer.max_steps" in capped
    assert training_steps_warning(142, 35, 200, max_steps=600) is None
    limited = training_steps_warning(142, 35, 200, limit_batches=2)  # 200 x 2 = 400
    assert limited is not None and "only 400 GAN iterations" in limited and "trainer.limit_train_batches=2" in limited
    assert "only 400" in training_steps_warning(142, 35, 200, limit_batches=0.5)  # int(4 x 0.5) = 2 per epoch
    assert training_steps_warning(142, 35, 200, limit_batches=0.75) is None  # 3 per epoch: 600
    assert training_steps_warning(142, 35, -1, max_steps=1000) is None  # epochs unlimited, max_steps ends it
