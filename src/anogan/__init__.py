"""anogan: GAN-based image anomaly detection (AnoGAN and successors) with Lightning and Hydra."""

from pathlib import Path

__version__ = "0.2.0"


def conf_dir() -> str:
    """The Hydra config folder: ``conf/`` of a checkout, else the ``anogan/conf`` an installed wheel ships."""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / "config.yaml").is_file():
        return str(checkout)
    return str(Path(__file__).resolve().parent / "conf")
