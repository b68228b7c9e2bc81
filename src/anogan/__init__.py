"""anogan: GAN-based image anomaly detection (AnoGAN and successors) with Lightning and Hydra.

The Python API (``anogan.deploy.api``, imported on first use so ``import anogan`` stays light):
``anogan.load(run folder or scorer.pt) -> Detector``, ``Detector.predict(images) -> Predictions``,
``anogan.fit(overrides) -> TrainResult``.
"""

from pathlib import Path

__version__ = "0.2.0"
__all__ = ["ConfigError", "Detector", "InputError", "Predictions", "TrainResult", "conf_dir", "fit", "load"]
_API = ("ConfigError", "Detector", "InputError", "Predictions", "TrainResult", "fit", "load")


def conf_dir() -> str:
    """The Hydra config folder: ``conf/`` of a checkout, else the ``anogan/conf`` an installed wheel ships."""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / "config.yaml").is_file():
        return str(checkout)
    return str(Path(__file__).resolve().parent / "conf")


def __getattr__(name: str) -> object:
    if name in _API:
        from anogan.deploy import api

        return getattr(api, name)
    raise AttributeError(f"module 'anogan' has no attribute {name!r}")
