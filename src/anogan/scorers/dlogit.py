"""``mapping=dlogit``: the discriminator's own verdict as the anomaly score, one forward pass.

D was trained to give real (normal) images a high logit and generated ones (and, with
``model.nda``, real images made implausible: jigsaw, cutout, rotation; Sinha et al., ICLR 2021) a
low one. An image's score is minus D's logit::

    dlogit(x) = −D(x)

so low realness is anomalous. Works with any discriminator (plain DCGAN too, but without ``nda``
a D trained against a collapsing G has little reason to rank unseen classes low). ``transforms``
(``model.self_supervised``) adds the ``transformations`` component of a D with a transformation
head, so ``combine: [dlogit, transformations]`` sums both on the validation normals' scale
(``anogan.post_processing.calibration``); ``mapping=dcombined`` may name ``dlogit`` in its ``combine`` as well.
No anomaly map. D is in eval mode (BatchNorm on running statistics): each image's score depends
on that image alone, so batching is exact and the ONNX graph gives the same scores.
"""

from __future__ import annotations

import torch

from anogan.models.dcgan import Discriminator, Generator
from anogan.scorers.discriminator import ScorerConfigError, _DReader, check_transform_head, transformation_scores


def dlogit_scores(discriminator: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """−D(x): minus the discriminator's logit of each image, float32 (N,)."""
    return -discriminator(x).float().flatten()


class DLogitScorer(_DReader):
    """``mapping=dlogit``: minus D's logit (module docstring).

    Args (besides ``Scorer``'s): ``transforms``: null, or the set D's transformation head was trained
    on (``model.self_supervised``) to add the ``transformations`` component; ``combine``: components
    that the calibration standardises and sums (dlogit, transformations). Raises
    ``ScorerConfigError`` for ``maps=true`` (no anomaly map), for a ``transformations`` component
    without a head, and for a ``combine`` naming a component it does not output."""

    components = ("dlogit", "transformations")

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        transforms: str | None = None,
        batch_size: int = 256,
        correction: str = "none",
        map_sigma: float = 1.0,
        map_features: bool = False,
        maps: bool = False,
        seed: int = 0,
        combine: list[str] | None = None,
    ):
        super().__init__(generator, discriminator, batch_size, correction, map_sigma, map_features, maps, seed)
        if maps:
            raise ScorerConfigError("mapping.maps=true: mapping=dlogit has no anomaly map; mapping=dfeatures gives one.")
        unknown = [c for c in combine or [] if c not in self.components]
        if unknown:
            raise ScorerConfigError(f"mapping.combine names {unknown}: mapping=dlogit outputs {', '.join(self.components)}.")
        if transforms or "transformations" in (combine or []):
            check_transform_head(discriminator, transforms)
        self.save_hyperparameters(ignore=["generator", "discriminator"], logger=False)

    def summary(self) -> str:
        extra = f" + transformation head, {self.hparams.transforms}" if self.hparams.transforms else ""
        return f"D's logit{extra}, one forward pass"

    @torch.no_grad()
    def infer(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = {"dlogit": dlogit_scores(self.discriminator, x)}
        if self.hparams.transforms:
            out["transformations"] = transformation_scores(self.discriminator, x, self.hparams.transforms)
        return {"score": out["dlogit"], **out, **self._common(x)}
