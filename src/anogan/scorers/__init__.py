"""Scorers: one family, chosen by ``_target_`` in ``conf/mapping/<name>.yaml``.

* ``LatentMapping`` (``mapping=latent``): AnoGAN's per-image latent search from a random z.
* ``EncoderScorer`` (``mapping=encoder``): f-AnoGAN's izi_f encoder, one forward pass.
* ``EncoderSearch`` (``mapping=encoder_search``): z starts at E(x), then a few search steps.
* ``TransformationScorer`` (``mapping=transformations``): D's transformation head, summed cross-entropy.
* ``DFeatureScorer`` (``mapping=dfeatures`` / ``dcombined``): kNN distances in D's feature space, per image and per patch.
* ``DLogitScorer`` (``mapping=dlogit``): minus D's own logit (a D trained with ``model.nda``).
"""

from anogan.scorers.base import Scorer, anomaly_map, check_finite_scores
from anogan.scorers.discriminator import DFeatureScorer, TransformationScorer
from anogan.scorers.dlogit import DLogitScorer
from anogan.scorers.encoder import Encoder, EncoderScorer, izif_components
from anogan.scorers.latent import EncoderSearch, LatentMapping, initial_latents, score_components, search_copy
from anogan.utils.errors import ScoreDivergenceError

__all__ = [
    "DFeatureScorer",
    "DLogitScorer",
    "TransformationScorer",
    "Encoder",
    "EncoderScorer",
    "EncoderSearch",
    "LatentMapping",
    "Scorer",
    "ScoreDivergenceError",
    "anomaly_map",
    "check_finite_scores",
    "initial_latents",
    "izif_components",
    "score_components",
    "search_copy",
]
