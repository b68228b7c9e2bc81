"""Scorers that read the discriminator: one forward pass per image (per transformation), no latent search.

* ``TransformationScorer`` (``mapping=transformations``): the GeoTrans / rotation-prediction score
  (Golan & El-Yaniv, NeurIPS 2018; Hendrycks et al., NeurIPS 2019). D carries an auxiliary head
  that classifies which of T transformations an image was given (``model.self_supervised``, trained
  on the normal images only). An image's score is the cross-entropy of that head on every
  transformed copy, summed over the transformations::

      transformations(x) = Σ_t −log softmax(h(f(τ_t(x))))_t

  A normal image is classified confidently (small score); an anomaly is not (large score).
* ``DFeatureScorer`` (``mapping=dfeatures``): distances in D's feature space to the normal training
  images (a memory bank built once by ``fit``; Bergman et al. 2020's kNN idea on our own network).
  ``dfeatures(x)``: the mean Euclidean distance of the pooled features of layer ``layer`` to their
  ``k`` nearest bank entries. ``dpatches(x)``: the largest, over the cells of layer
  ``patch_layer``'s feature map (each cell averaged with its 3×3 neighbours), of the distance of a
  cell to its nearest normal cell; those distances, upsampled bilinearly to S×S and smoothed with a
  Gaussian of ``map_sigma`` pixels, are the anomaly map (PatchCore, Roth et al., CVPR 2022, on the
  GAN's own discriminator instead of a pretrained network). Works with any discriminator.
* ``mapping=dcombined``: ``DFeatureScorer`` with ``transforms`` set, so one pass gives all three
  components; its ``combine`` names those that the run's calibration standardises on the
  validation normals and sums (``anogan.post_processing.calibration``).

The memory banks are buffers (they travel in ``scorer.pt``), subsampled to at most ``bank_size`` /
``patch_bank_size`` entries, by a greedy k-center coreset (PatchCore) or at random (``coreset``).
Size in scorer.pt: 4 bytes × entries × channels, e.g. 2,000 × 256 (2 MB) + 16,384 × 128 (8 MB) for
the default 32-px DCGAN (d_width 64). Every image's scores depend on that image alone (D in eval
mode), so batching is exact and scoring is resumable.
"""

from __future__ import annotations

import math
from collections.abc import Sized
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from anogan.config.choices import CORESETS, POOLINGS
from anogan.models.dcgan import Discriminator, Generator
from anogan.scorers.base import Scorer, smooth
from anogan.utils.errors import UserError
from anogan.utils.progress import Steps

MAX_GREEDY_CELLS = 100_000  # above: the cell bank is a random subset (greedy costs cells × patch_bank_size)


class ScorerConfigError(UserError):
    """A scorer setting that does not fit the discriminator it reads."""


def layer_outputs(discriminator: Discriminator, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    """The feature maps of D's feature stack after its blocks ``layers`` (1-based; -1 = the last).

    A block ends at each activation (``nn.LeakyReLU``) of ``discriminator.features``; block k of
    the DCGAN D at S px has width W·2^(k−1) and size S/2^k. Raises ``ScorerConfigError`` for a
    block it does not have."""
    blocks = [i for i, m in enumerate(discriminator.features) if isinstance(m, nn.LeakyReLU)]
    wanted = {}
    for layer in layers:
        index = layer if layer > 0 else len(blocks) + 1 + layer
        if not 1 <= index <= len(blocks):
            raise ScorerConfigError(
                f"mapping layer {layer}: the discriminator has {len(blocks)} feature blocks; use 1..{len(blocks)} or -1 (the last)."
            )
        wanted[blocks[index - 1]] = layer
    out = {}
    h = x
    for i, module in enumerate(discriminator.features):
        h = module(h)
        if i in wanted:
            out[wanted[i]] = h
        if len(out) == len(wanted):
            break
    return out


def pool(features: torch.Tensor, pooling: str) -> torch.Tensor:
    """N×C×h×w -> N×F: mean or max over positions (F = C), or flattened (F = C·h·w)."""
    if pooling == "mean":
        return features.float().mean((2, 3))
    if pooling == "max":
        return features.float().amax((2, 3))
    if pooling == "flatten":
        return features.float().flatten(1)
    raise ScorerConfigError(f"mapping.pooling={pooling!r}: use one of {', '.join(POOLINGS)}.")


def patch_cells(features: torch.Tensor, neighbourhood: int) -> torch.Tensor:
    """N×C×h×w -> N×h×w×C cells, each averaged with its ``neighbourhood``² neighbours (PatchCore's
    local aggregation; 1: none)."""
    f = features.float()
    if neighbourhood > 1:
        f = F.avg_pool2d(f, neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=False)
    return f.permute(0, 2, 3, 1)


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (n×m) between the rows of a (n×F) and b (m×F), as
    sqrt(max(|a|² + |b|² − 2a·b, 0)): one matrix product (exportable to ONNX), computed in float64 and
    returned as float32 (in float32 the cancellation left errors of about 3e-4·|a| for near rows, and
    ONNX Runtime and PyTorch disagreed by 1e-3 relative)."""
    a, b = a.double(), b.double()
    d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None] - 2 * a @ b.T
    return d2.clamp_min(0).sqrt().float()


def knn_distance(query: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Mean distance of each query row (n×F) to its ``k`` nearest rows of ``bank`` (m×F): shape (n,)."""
    k = min(k, bank.shape[0])
    if torch.jit.is_tracing() or query.shape[0] <= chunk:  # one piece: the ONNX graph keeps a dynamic batch
        return pairwise_distances(query, bank).topk(k, dim=1, largest=False).values.mean(1)
    return torch.cat([pairwise_distances(q, bank).topk(k, dim=1, largest=False).values.mean(1) for q in query.split(chunk)])


def random_projection(rows: torch.Tensor, dim: int | None, seed: int) -> torch.Tensor:
    """float32 rows (n×F) projected to ``dim`` dimensions by a fixed-seed Gaussian matrix with entries
    N(0, 1/dim) (Johnson-Lindenstrauss: distances kept up to a factor 1 ± ε with high probability);
    the rows unprojected (as float32) when ``dim`` is None or not below F."""
    rows = rows.float()
    if dim is None or dim >= rows.shape[1]:
        return rows
    matrix = torch.randn(rows.shape[1], dim, generator=torch.Generator().manual_seed(seed)) / math.sqrt(dim)
    return rows @ matrix


def greedy_coreset(
    bank: torch.Tensor, size: int, seed: int, projection: int | None = None, progress: Steps | None = None
) -> torch.Tensor:
    """Indices (LongTensor (size,)) of a greedy k-center coreset of the rows of ``bank`` (n×F, size < n):
    from a seeded random start, each new row is the one farthest from those chosen (Sener & Savarese
    2018, as PatchCore). The distances are computed in float32, on the rows projected to ``projection``
    dimensions (``random_projection``, seeded by ``seed``; PatchCore, Roth et al. 2022, project the
    same way before their coreset): only the choice is approximate, the caller keeps the full rows.
    Cost: ``size`` passes over n × min(F, projection) floats. ``progress`` is told each chosen row."""
    rows = random_projection(bank, projection, seed)
    norms = rows.pow(2).sum(1, keepdim=True)

    def distances_to(i: int) -> torch.Tensor:  # pairwise_distances(rows, rows[i][None]) term by term
        row = rows[i][None]
        return (norms + row.pow(2).sum(1)[None] - 2 * rows @ row.T).clamp_min(0).sqrt()[:, 0]

    gen = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(rows), (1,), generator=gen))]
    nearest = distances_to(chosen[0])
    for _ in range(size - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, distances_to(i))
        if progress is not None:
            progress.step(len(chosen))
    return torch.tensor(chosen)


def subsample(
    bank: torch.Tensor,
    size: int,
    method: str,
    seed: int,
    projection: int | None = None,
    progress: Steps | None = None,
) -> torch.Tensor:
    """At most ``size`` rows of ``bank``: a greedy k-center coreset (``greedy_coreset``, its distances
    on rows projected to ``projection`` dimensions; null: none) or a seeded random subset. The kept
    rows are the bank's own, full-dimensional. Deterministic for a given ``seed``."""
    if len(bank) <= size:
        return bank
    if method == "random":
        return bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[:size].sort().values]
    if method != "greedy":
        raise ScorerConfigError(f"mapping.coreset={method!r}: use one of {', '.join(CORESETS)}.")
    return bank[greedy_coreset(bank, size, seed, projection, progress)]


def coverage_radius(bank: torch.Tensor, kept: torch.Tensor, chunk: int = 4096) -> float:
    """The largest, over the rows of ``bank``, Euclidean distance to the nearest row of ``kept``: how
    far the worst-covered normal row is from the memory bank (what a greedy k-center coreset minimises,
    within a factor 2 of the best possible)."""
    return max(float(pairwise_distances(b, kept).amin(1).max()) for b in bank.split(chunk))


def transformation_scores(discriminator: Discriminator, x: torch.Tensor, transforms: str) -> torch.Tensor:
    """Σ_t cross-entropy of D's transformation head on τ_t(x) with label t (module docstring), float32 (N,)."""
    from anogan.models.transforms import apply_transforms, transform_count

    copies = apply_transforms(x, transforms).unflatten(0, (transform_count(transforms), -1))  # T×N×C×S×S
    total = x.new_zeros(x.shape[0], dtype=torch.float32)
    for t in range(copies.shape[0]):
        logits = discriminator.transform_logits(copies[t]).float()
        total = total + (logits.logsumexp(1) - logits[:, t])
    return total


def check_transform_head(discriminator: nn.Module, transforms: str | None) -> None:
    """Refuse, in one line naming ``model.self_supervised``, a discriminator without a head for ``transforms``."""
    classes = getattr(discriminator, "transform_classes", 0) or 0
    if not transforms or not classes or not hasattr(discriminator, "transform_logits"):
        raise ScorerConfigError(
            "mapping=transformations needs a discriminator with a transformation head: train the GAN with "
            "model.self_supervised=rotations (or geotrans), or score with mapping=dfeatures."
        )
    from anogan.models.transforms import transform_count

    if transform_count(transforms) != classes:
        raise ScorerConfigError(
            f"model.self_supervised={transforms} has {transform_count(transforms)} transformations but the discriminator's "
            f"head has {classes} classes: set model.self_supervised to the value the GAN was trained with."
        )


class _DReader(Scorer):
    """What the discriminator-reading scorers share: no reconstruction, no z, their own map."""

    def summary(self) -> str:
        return f"{type(self).__name__}, one forward pass"

    def _common(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"steps": torch.zeros(len(x), dtype=torch.long, device=x.device)}


class TransformationScorer(_DReader):
    """``mapping=transformations``: the summed cross-entropy of D's transformation head (module docstring).

    Args (besides ``Scorer``'s): ``transforms``: the transformation set the head was trained on
    (``model.self_supervised``: rotations | geotrans). Raises ``ScorerConfigError`` when D has no
    such head. No anomaly map (``maps`` must be false)."""

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
        check_transform_head(discriminator, transforms)
        if maps:
            raise ScorerConfigError("mapping.maps=true: mapping=transformations has no anomaly map; mapping=dcombined gives one.")
        self.save_hyperparameters(ignore=["generator", "discriminator"], logger=False)

    def summary(self) -> str:
        return f"transformation head, {self.hparams.transforms}"

    @torch.no_grad()
    def infer(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        score = transformation_scores(self.discriminator, x, self.hparams.transforms)
        return {"score": score, "transformations": score, **self._common(x)}


class DFeatureScorer(_DReader):
    """``mapping=dfeatures``: kNN distances to the normal training images in D's feature space (module docstring).

    Args (besides ``Scorer``'s):
        k: nearest bank entries averaged for ``dfeatures``.
        layer, pooling: the block of D's feature stack and how its map becomes one vector (mean | max | flatten).
        bank_size: the most image entries kept (coreset); patch_bank_size: the most cells kept.
        patch_layer: the block whose cells give ``dpatches`` and the map; patch_neighbourhood: local averaging (1: none).
        coreset: greedy | random.
        coreset_projection: the greedy coreset's distances on features projected to this many
            dimensions (fixed-seed Gaussian random projection, float32; null: the full features). Only
            the choice of rows is approximate: the banks keep the full features.
        transforms: ``model.self_supervised`` (rotations | geotrans) to add the ``transformations``
            component of a D with a transformation head (``mapping=dcombined``); null: none.
        score: the component that is the scorer's ``score``: dfeatures | dpatches | transformations | dlogit
            (−D(x), ``anogan.scorers.dlogit``; computed when ``score`` or ``combine`` names it).
        combine: components that the calibration standardises and sums (``anogan.post_processing.calibration``).
    """

    needs_fit = True
    sized_by_fit = ("bank", "patch_bank")
    bank: torch.Tensor
    patch_bank: torch.Tensor
    components = ("dfeatures", "dpatches", "transformations", "dlogit")

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        k: int = 5,
        layer: int = -1,
        pooling: str = "mean",
        bank_size: int = 2000,
        patch_layer: int = 2,
        patch_neighbourhood: int = 3,
        patch_bank_size: int = 16384,
        coreset: str = "greedy",
        coreset_projection: int | None = None,
        transforms: str | None = None,
        score: str = "dfeatures",
        batch_size: int = 256,
        correction: str = "none",
        map_sigma: float = 1.0,
        map_features: bool = False,
        maps: bool = True,
        seed: int = 0,
        combine: list[str] | None = None,
    ):
        super().__init__(generator, discriminator, batch_size, correction, map_sigma, map_features, maps, seed)
        if pooling not in POOLINGS:
            raise ScorerConfigError(f"mapping.pooling={pooling!r}: use one of {', '.join(POOLINGS)}.")
        if coreset not in CORESETS:
            raise ScorerConfigError(f"mapping.coreset={coreset!r}: use one of {', '.join(CORESETS)}.")
        if score not in self.components:
            raise ScorerConfigError(f"mapping.score={score!r}: use one of {', '.join(self.components)}.")
        if transforms or score == "transformations" or "transformations" in (combine or []):
            check_transform_head(discriminator, transforms)
        if coreset_projection is not None and not (isinstance(coreset_projection, int) and coreset_projection >= 1):
            raise ScorerConfigError(
                f"mapping.coreset_projection={coreset_projection!r}: use null (the full features) or a whole number >= 1, e.g. 128."
            )
        if k < 1 or bank_size < 1 or patch_bank_size < 1 or patch_neighbourhood < 1 or patch_neighbourhood % 2 == 0:
            raise ScorerConfigError(
                "mapping.k, mapping.bank_size and mapping.patch_bank_size must be >= 1, mapping.patch_neighbourhood odd and >= 1."
            )
        self.save_hyperparameters(ignore=["generator", "discriminator"], logger=False)
        layer_outputs(discriminator, self._probe(), [layer, patch_layer])  # a missing block fails now, not after fit
        # empty until fit (or load_state_dict from scorer.pt, which resizes them)
        self.register_buffer("bank", torch.zeros(0, 0))
        self.register_buffer("patch_bank", torch.zeros(0, 0))

    def _probe(self) -> torch.Tensor:
        p = next(self.generator.parameters())
        with torch.no_grad():
            was = self.generator.training
            self.generator.eval()
            shape = self.generator(torch.zeros(1, self.generator.latent_dim, 1, 1, dtype=p.dtype, device=p.device)).shape
            self.generator.train(was)
        return torch.zeros(shape, dtype=p.dtype, device=p.device)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in ("bank", "patch_bank"):  # the banks' sizes come from the file
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def summary(self) -> str:
        hp = self.hparams
        if len(self.bank) == 0:  # not fit yet (a plan): the banks' sizes are the configured caps
            return f"D-feature kNN (k={hp.k}, banks of up to {hp.bank_size} images and {hp.patch_bank_size} cells, built first)"
        return f"D-feature kNN (k={hp.k}, {len(self.bank)} images, {len(self.patch_bank)} cells)"

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hp = self.hparams
        maps = layer_outputs(self.discriminator, x, [hp.layer, hp.patch_layer])
        return pool(maps[hp.layer], hp.pooling), patch_cells(maps[hp.patch_layer], hp.patch_neighbourhood)

    def bank_plan(self, n_images: int) -> list[dict[str, Any]]:
        """What ``fit`` builds from ``n_images`` training images, per memory bank: ``name`` (bank |
        patch_bank), ``rows`` (entries before subsampling), ``dim`` (features per entry), ``kept``
        (entries after), ``method`` (greedy | random | all) and ``selection_dim`` (the dimensions the
        greedy coreset's distances use: ``coreset_projection`` when below ``dim``)."""
        hp = self.hparams
        with torch.no_grad():
            pooled, cells = self._features(self._probe())
        per_image = cells.shape[1] * cells.shape[2]
        plan = []
        for name, rows, dim, size in (
            ("bank", n_images, pooled.shape[1], hp.bank_size),
            ("patch_bank", n_images * per_image, cells.shape[3], hp.patch_bank_size),
        ):
            # greedy over every cell costs cells × patch_bank_size distance rows: random above 100k cells
            method = hp.coreset if name == "bank" or rows <= MAX_GREEDY_CELLS else "random"
            method = "all" if rows <= size else method
            projected = hp.get("coreset_projection")
            selection = min(dim, projected) if projected else dim
            plan.append(
                {
                    "name": name,
                    "rows": rows,
                    "dim": int(dim),
                    "kept": min(rows, size),
                    "method": method,
                    "selection_dim": selection,
                }
            )
        return plan

    @torch.no_grad()
    def fit(self, train_loader: DataLoader, trainer_kwargs: dict | None = None) -> None:
        """Build the memory banks from the normal training images (each once, in dataset order;
        the shuffling and repeats of ``train_loader`` are ignored), then subsample them
        (``bank_plan``). Writes progress lines (``anogan.utils.progress.Steps``) for the feature pass and
        for each greedy coreset."""
        hp = self.hparams
        dataset = getattr(train_loader.dataset, "split", train_loader.dataset)  # RepeatedSplit -> its images
        loader = DataLoader(dataset, batch_size=int(hp.batch_size), shuffle=False)
        device = next(self.discriminator.parameters()).device
        n_images = len(cast("Sized", dataset))
        images, cells = [], []
        reading = Steps(f"Memory bank: D features of {n_images} training images", len(loader), "batches")
        for done, batch in enumerate(loader, 1):
            pooled, patches = self._features(batch["image"].to(device))
            images.append(pooled.cpu())
            cells.append(patches.flatten(0, 2).cpu())
            reading.step(done)
        built = {"bank": torch.cat(images), "patch_bank": torch.cat(cells)}
        for offset, plan in enumerate(self.bank_plan(n_images)):
            rows = built[plan["name"]]
            progress = None
            if plan["method"] == "greedy":
                what = "image vectors" if plan["name"] == "bank" else "cells"
                projected = (
                    f", distances in {plan['selection_dim']} projected dims" if plan["selection_dim"] < plan["dim"] else ""
                )
                phase = f"Memory bank: greedy coreset of {len(rows):,} {what} × {plan['dim']}{projected}"
                progress = Steps(phase, plan["kept"], "rows kept", first=1)
            method = "greedy" if plan["method"] == "all" else plan["method"]
            kept = subsample(rows, plan["kept"], method, hp.seed + offset, hp.get("coreset_projection"), progress)
            setattr(self, plan["name"], kept.to(device))

    def _require_fit(self) -> None:
        if not len(self.bank) or not len(self.patch_bank):
            raise ScorerConfigError("the D-feature scorer has no memory bank: call fit on the normal training images first.")

    def knn_components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``dfeatures`` (N,), ``dpatches`` (N,) and the unsmoothed cell map (N×h×w) of images x."""
        self._require_fit()
        pooled, cells = self._features(x)
        dfeatures = knn_distance(pooled, self.bank.float(), self.hparams.k)
        n, h, w, c = cells.shape
        cell_map = knn_distance(cells.reshape(-1, c), self.patch_bank.float(), 1).reshape(n, h, w)
        return {"dfeatures": dfeatures, "dpatches": cell_map.flatten(1).amax(1), "cell_map": cell_map}

    def patch_map(self, cell_map: torch.Tensor, size: int) -> torch.Tensor:
        """Cell distances (N×h×w) upsampled bilinearly to size×size and smoothed (``map_sigma``)."""
        up = F.interpolate(cell_map[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        return smooth(up, self.hparams.map_sigma)

    @torch.no_grad()
    def infer(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.knn_components(x)
        cell_map = out.pop("cell_map")
        if self.hparams.transforms:
            out["transformations"] = transformation_scores(self.discriminator, x, self.hparams.transforms)
        if self.hparams.score == "dlogit" or "dlogit" in (self.hparams.get("combine") or []):
            out["dlogit"] = -self.discriminator(x).float().flatten()  # anogan.scorers.dlogit
        out["score"] = out[self.hparams.score]
        if self.hparams.maps:
            out["map"] = self.patch_map(cell_map, x.shape[-1])
        return {**out, **self._common(x)}
