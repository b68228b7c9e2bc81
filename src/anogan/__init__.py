"""anogan: GAN-based image anomaly detection (AnoGAN and successors) with Lightning and Hydra.

The Python API (``anogan.deploy.api``, imported on first use so ``import anogan`` stays light):
``anogan.load(run folder or scorer.pt) -> Detector``, ``Detector.predict(images) -> Predictions``,
``anogan.fit(overrides) -> TrainResult``.
"""

from anogan.config.paths import conf_dir

__version__ = "0.2.0"
__all__ = ["ConfigError", "Detector", "InputError", "Predictions", "TrainResult", "conf_dir", "fit", "load"]
_API = ("ConfigError", "Detector", "InputError", "Predictions", "TrainResult", "fit", "load")


def __getattr__(name: str) -> object:
    if name in _API:
        from anogan.deploy import api

        return getattr(api, name)
    raise AttributeError(f"module 'anogan' has no attribute {name!r}")
