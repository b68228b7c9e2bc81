"""TensorBoard: the CUSTOM SCALARS layout of a run's dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def add_dashboard_layout(tb_writer: SummaryWriter) -> None:
    """TensorBoard's CUSTOM SCALARS tab: related curves on one chart (losses; D(x) against D(G(z)))."""
    from tensorboard.summary.v1 import custom_scalar_pb  # noqa: F401  (tensorboard is a dependency)
    from torch.utils.tensorboard.summary import custom_scalars

    layout = {
        "GAN": {
            "losses (per step)": ["Multiline", ["train/loss_d_step", "train/loss_g_step"]],
            "losses (per epoch)": ["Multiline", ["train/loss_d_epoch", "train/loss_g_epoch"]],
            "D(x) vs D(G(z)) (per epoch)": ["Multiline", ["train/d_real_epoch", "train/d_fake_epoch"]],
        }
    }
    tb_writer._get_file_writer().add_summary(custom_scalars(layout))
