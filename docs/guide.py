# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # AnoGAN in a notebook: define normal, train, score, look, choose a threshold
#
# The story of the guidebook this project grew from (docs: `../shared/docs/recipe.md`), told with
# the project's Python API (`anogan.fit`, `anogan.load`, `Detector.predict`):
#
# 1. **define normal**: CIFAR-10 cars are normal, every other class is an anomaly;
# 2. **train the GAN** on normal images only (and score the validation and test images);
# 3. **score** images with the run's scorer file;
# 4. **look**: the original next to G(z), and the anomaly map, for a normal and an abnormal image;
# 5. the **score histograms** of normal and anomalous images;
# 6. **choose a threshold on validation** (never on test), then read the test split at it.
#
# Open it as a notebook with `jupytext --to notebook docs/guide.py` (or Jupyter's jupytext
# plugin). By default it trains `experiment=cifar_car_cpu` on the CIFAR-10 copy in `DATA_ROOT`
# (about 25 minutes on a laptop CPU). `QUICK = True` (or the environment variable
# `ANOGAN_GUIDE_QUICK=1`) trains a tiny GAN for one epoch at 32 px, in a minute: the pictures
# then show noise, not cars, but every step runs (the test suite executes the guide this way).

# %% tags=["parameters"]
import os
from pathlib import Path

DATA_ROOT = os.environ.get("ANOGAN_GUIDE_DATA", "../shared/data/cifar10")  # the folder holding cifar-10-batches-py
QUICK = os.environ.get("ANOGAN_GUIDE_QUICK", "0") == "1"
RUN_DIR = Path(os.environ.get("ANOGAN_GUIDE_RUN", "outputs/guide/run"))

# %% [markdown]
# ## 1. Define normal
#
# `data.normal_class=1` (automobile) makes cars normal; the GAN sees only normal training images.
# The literature's one-class protocol holds out a tenth of the normal training images for
# validation (with anomalies from the other classes, 9 per normal) and tests on the CIFAR-10 test
# set (1,000 cars, 9,000 others).

# %%
overrides = [
    f"data.root={DATA_ROOT}",
    "data.verify_checksums=false",
    "data.download=false",
    "data.normal_class=1",
    "overwrite=true",
]
if QUICK:  # tiny settings: a minute on a CPU, nothing learnt
    overrides += [
        "data.image_size=32",
        "data.batch_size=16",
        "model.latent_dim=16",
        "model.g_width=8",
        "model.d_width=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        "mapping.iterations=3",
        "mapping.batch_size=32",
    ]
else:
    overrides += ["experiment=cifar_car_cpu"]
overrides

# %% [markdown]
# ## 2. Train the GAN (and evaluate it)
#
# `anogan.fit` composes the project's Hydra configuration with these overrides and runs the whole
# pipeline in this process, as `anogan-train` would: stage 1 trains the DCGAN on normal images;
# stage 2 maps every validation and test image to its closest G(z) (AnoGAN's latent search),
# scores it, fits the thresholds on validation and writes the run folder (`scores.csv`,
# `metrics.json`, figures, and `scorer.pt`, everything needed to score new images).

# %%
import anogan

run = anogan.fit(overrides, run_dir=RUN_DIR)
print(run.run_dir)
print({split: {k: run.metrics[split].get(k) for k in ("auroc", "ap", "f1")} for split in ("val", "test")})

# %% [markdown]
# ## 3. Score images with the run's scorer file
#
# `anogan.load` reads only `scorer.pt`. `predict` takes paths, folders, PIL images, numpy arrays
# or tensors, converts them exactly as the run's own images were, and returns one row per image:
# the score, a conformal p-value against the validation normals, the label at the run's threshold
# and the score's components.

# %%
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

detector = anogan.load(run.run_dir)
cfg = OmegaConf.load(run.run_dir / "config_resolved.yaml")
datamodule = instantiate(cfg.data)
datamodule.setup()
images, labels = datamodule.eval_set.images, datamodule.eval_set.labels.numpy()  # uint8; 0 normal, 1 anomalous
test_rows = np.flatnonzero(datamodule.eval_split == "test")
normal_i = test_rows[labels[test_rows] == 0][0]
abnormal_i = test_rows[labels[test_rows] == 1][0]
examples = detector.predict(images[[normal_i, abnormal_i]], maps=True, reconstructions=True)
examples.to_pandas()

# %% [markdown]
# ## 4. Original, G(z) and the anomaly map
#
# The latent search finds the z whose G(z) is closest to the image. A normal image should be
# reconstructed well; an anomaly should leave a residual |x − G(z)|, which the anomaly map shows.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt  # (anogan's report module selects the Agg backend: the magic above shows figures again)


def to_rgb(x: torch.Tensor) -> np.ndarray:
    """C×S×S in [-1, 1] or uint8 -> H×W×C floats in [0, 1] for imshow."""
    x = x.float() / 255 if x.dtype == torch.uint8 else (x.float() + 1) / 2
    return x.clamp(0, 1).permute(1, 2, 0).numpy().squeeze()


fig, axes = plt.subplots(2, 3, figsize=(7, 5))
for row, (name, row_i) in enumerate((("normal", 0), ("abnormal", 1))):
    axes[row, 0].imshow(to_rgb(examples.inputs[row_i]))
    axes[row, 1].imshow(to_rgb(examples.reconstructions[row_i]))
    axes[row, 2].imshow(examples.maps[row_i], cmap="jet")
    axes[row, 0].set_ylabel(f"{name}\nscore {examples[row_i]['score']:.3g}")
for ax, title in zip(axes[0], ("original x", "G(z)", "anomaly map")):
    ax.set_title(title)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Score histograms
#
# `scores.csv` holds the score of every validation and test image, as the run computed it (the
# detector gives the same numbers for the same images). The better the two histograms separate,
# the higher the AUROC.

# %%
scores = pd.read_csv(run.run_dir / "scores.csv")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
for ax, split in zip(axes, ("val", "test")):
    part = scores[scores["split"] == split]
    bins = np.histogram_bin_edges(scores["score"], bins=40)
    ax.hist(part.loc[part["label"] == 0, "score"], bins=bins, alpha=0.6, density=True, label="normal (car)")
    ax.hist(part.loc[part["label"] == 1, "score"], bins=bins, alpha=0.6, density=True, label="anomalous")
    auroc = run.metrics[split].get("auroc")
    ax.set_title(f"{split}: AUROC {auroc:.3f}" if auroc is not None else split)
    ax.set_xlabel("anomaly score")
axes[0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Choose a threshold on validation, then read the test split at it
#
# The run fitted three rules on the validation split: `fpr` (flag at most 5 % of validation
# normals), `f1` (best F1 on validation) and `youden` (best sensitivity + specificity − 1). Any
# other choice must also be made on validation, e.g. the 99th percentile of the validation
# normals' scores. Only then look at the test split, once.

# %%
val = scores[scores["split"] == "val"]
mine = float(np.quantile(val.loc[val["label"] == 0, "score"], 0.99))
print("thresholds fitted on validation:", {r: run.metrics["threshold"].get(r) for r in ("fpr", "f1", "youden")})
print("my rule (99th percentile of validation normals):", mine)

test_scores = scores[scores["split"] == "test"]
for name, t in (("youden", run.metrics["threshold"]["youden"]), ("99th percentile", mine)):
    flagged = test_scores["score"] >= t
    tpr = flagged[test_scores["label"] == 1].mean()
    fpr = flagged[test_scores["label"] == 0].mean()
    print(f"{name:>16}: threshold {t:.4g}, test: {tpr:.1%} of anomalies flagged, {fpr:.1%} of normals flagged")

# the same threshold on new images: detector.predict(images, threshold=mine)
detector.predict(images[test_rows[:4]], threshold=mine).to_pandas()[["source", "score", "p_value", "label"]]
