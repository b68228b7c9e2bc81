import lightning as L
import pytest
import torch

from anogan.models import Discriminator, Generator
from anogan.models.gan import GAN


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_discriminator_shapes(size, channels):
    g = Generator(latent_dim=20, channels=channels, image_size=size, width=8)
    d = Discriminator(channels=channels, image_size=size, width=8)
    x = g(torch.randn(5, 20, 1, 1))
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1  # Tanh, like the data's range
    assert d(x).shape == (5,)
    f = d.features(x)
    assert f.shape[-2:] == (4, 4)  # feature stack ends at 4x4, as in the seed at every size
    assert g(torch.randn(5, 20)).shape == x.shape  # flat z accepted too


def test_unsupported_size_is_refused():
    with pytest.raises(ValueError, match="image_size=48"):
        Generator(image_size=48)


def test_seed_init():
    g = Generator(latent_dim=100, width=64)
    w = g.net[0].weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = g.net[1]
    assert torch.all(bn.bias == 0) and abs(bn.weight.mean().item() - 1) < 0.01


def test_one_training_step_updates_both_networks():
    L.seed_everything(0)
    model = GAN(latent_dim=8, image_size=32, g_width=4, d_width=4, g_steps=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [{"image": torch.rand(3, 32, 32) * 2 - 1} for _ in range(8)]
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    after = model.state_dict()
    changed = lambda prefix: any(  # noqa: E731
        not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix) and before[k].is_floating_point()
    )
    assert changed("generator.") and changed("discriminator.")
    # one D step and g_steps G steps per batch
    opt_g, opt_d = trainer.optimizers
    assert opt_d.state[next(iter(model.discriminator.parameters()))]["step"] == 1
    assert opt_g.state[next(iter(model.generator.parameters()))]["step"] == 2


def test_fixed_noise_is_fixed():
    a, b = GAN(latent_dim=8, image_size=32, g_width=4, d_width=4), GAN(latent_dim=8, image_size=32, g_width=4, d_width=4)
    assert torch.equal(a.fixed_noise, b.fixed_noise)
