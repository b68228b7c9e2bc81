"""Allowed values of config keys, declared once: the schema checks against them and the code that
implements each option imports them from here (``config/`` imports nothing else of the package)."""

# data.normal_class / data.protocol (CIFAR-10)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

PROTOCOLS = ("seed", "one_class")


# Everything a missing or unreadable CIFAR-10 copy may need, in one message (anogan.config.checks and CIFAR10AnomalyDataModule._load).
MISSING_DATA_FIX = (
    "point data.root at the folder that holds cifar-10-batches-py (e.g. data.root=../shared/data/cifar10); "
    "data.download=true downloads it there but needs internet access; "
    "a copy re-created from other files (not torchvision's download) also needs data.verify_checksums=false"
)


def class_index(normal_class: int | str) -> int:
    """Accept a class index (1) or name ("automobile", also "car")."""
    if isinstance(normal_class, str):
        name = normal_class.strip().lower()
        if name.isdigit():
            return class_index(int(name))
        name = {"car": "automobile", "plane": "airplane"}.get(name, name)
        if name not in CLASSES:
            raise ValueError(f"data.normal_class={normal_class!r} is not a CIFAR-10 class; use 0-9 or one of {CLASSES}")
        return CLASSES.index(name)
    if not 0 <= int(normal_class) <= 9:
        raise ValueError(f"data.normal_class={normal_class} is out of range; use 0-9 or one of {CLASSES}")
    return int(normal_class)


# data.duplicates: what to do with a picture found in two splits; the perceptual hash's size
DUPLICATE_POLICIES = ("drop", "refuse", "keep")
HASH_BITS = 64  # average_hash: 8 x 8 cells
# data.resize (folder / MVTec images of another size)
RESIZE_POLICIES = ("stretch", "crop", "pad")
# data.alpha: how transparency is flattened
ALPHA_RULES = ("black", "white", "refuse")
# the whole-factor downscale a scorer file records: block average, or bilinear as any other size
DOWNSCALES = ("area", "bilinear")
# data.image_size: square model input sizes (pixels) the DCGAN networks are built for
IMAGE_SIZES = (32, 64, 128)
# data.synthetic.method
SYNTHETIC_METHODS = ("cutpaste", "blend")
# threshold.rule
THRESHOLD_RULES = ("fpr", "f1", "youden")
# score.correction
CORRECTIONS = ("none", "complexity", "times_complexity", "auto")
RESOLVED_CORRECTIONS = ("none", "complexity", "times_complexity")  # what "auto" resolves to
# mapping.pooling / mapping.coreset (D-feature scorers)
POOLINGS = ("mean", "max", "flatten")
CORESETS = ("greedy", "random")
# trainer.accelerator
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
# model.objective / model.d_norm / model.diffaugment (a comma-separated subset) / model.self_supervised
# (anogan.models.transforms.TRANSFORM_SETS) / model.nda (a comma-separated subset: anogan.models.nda)
OBJECTIVES = ("bce", "wgan_gp")
D_NORMS = ("batch", "layer", "instance", "none")
AUGMENT_POLICIES = ("color", "translation", "cutout")
TRANSFORM_SET_NAMES = ("rotations", "geotrans")
NDA_TRANSFORMS = ("jigsaw", "cutout", "rotation")
# mapping.score of the D-feature scorers
D_SCORES = ("dfeatures", "dpatches", "transformations", "dlogit")
# device= of anogan-predict and anogan-serve
DEVICES = ("auto", "cpu", "cuda")
# model.scheduler (or null)
SCHEDULERS = ("cosine_warm_restarts",)
