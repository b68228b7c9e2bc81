"""Data for the documented demonstrations (docs/mvtec.md, docs/own_images.md), written as a user's files would be:

    python benchmarks/make_demo_data.py mvtec <out>            # an MVTec AD-layout category "tiles" with masks
    python benchmarks/make_demo_data.py textures <out>         # real photographs: scikit-image's brick, category "brick"
    python benchmarks/make_demo_data.py textures <out> --photo grass [--foreign gravel] [--size 64] [--seed 0]
    python benchmarks/make_demo_data.py car-folder <out> --cifar <root of cifar-10-batches-py> [--n 1500]

``mvtec``: 64×64 grey-textured tiles (seeded smooth noise plus stripes), 120 training images, 30 good
test images and 30 per defect type: ``scratch`` (a thin bright line) and ``stain`` (a dark blob), each
with its 0/255 mask in ``ground_truth/<defect>/<name>_mask.png``.
``textures``: a real-photograph texture set: 64×64 grey crops of scikit-image's ``brick`` photograph
(``skimage.data.brick()``, 512×512, shipped with the package: ``pip install scikit-image``), category
``brick``: 240 training crops from the top three quarters of the photograph, and from its bottom
quarter (never trained on) 40 good test crops and 30 per defect type, each with its mask:
``foreign`` (a patch of the ``gravel`` photograph pasted in), ``scratch`` (a thin bright line) and
``smudge`` (a soft dark blob). ``--photo grass`` or ``gravel`` builds the same set from scikit-image's
other texture photographs (category = the photograph's name; the foreign patch is gravel, or brick for
gravel: ``--foreign``); ``--size`` sets the crop side (defect sizes scale with it; the data module
resizes to ``data.image_size``). The defaults write exactly the brick set documented since it was added.
``car-folder``: the first ``n`` automobile images of the CIFAR-10 training set as PNGs in
``<out>/normal/`` (a normal-only folder: no anomalous images at all).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64


def _texture(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.normal(0, 1, (8, 8))
    smooth = np.array(Image.fromarray(coarse.astype(np.float32), mode="F").resize((SIZE, SIZE), Image.BICUBIC))
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    stripes = np.sin((x + y * rng.uniform(0.2, 0.4)) / 3.0)
    img = 128 + 25 * smooth + 18 * stripes + rng.normal(0, 4, (SIZE, SIZE))
    return np.clip(img, 0, 255)


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


def mvtec(out: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root = out / "tiles"
    for i in range(120):
        _save(_texture(rng), root / "train" / "good" / f"{i:03d}.png")
    for i in range(30):
        _save(_texture(rng), root / "test" / "good" / f"{i:03d}.png")
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(30):
        img = _texture(rng)
        x0, y0 = rng.integers(8, 40, 2)
        length, angle = rng.integers(14, 24), rng.uniform(0, np.pi)
        t = np.linspace(0, 1, 200)
        mask = np.zeros((SIZE, SIZE), bool)
        xs, ys = (x0 + t * length * np.cos(angle)).astype(int), (y0 + t * length * np.sin(angle)).astype(int)
        for dx in (0, 1):
            mask[np.clip(ys, 0, SIZE - 1), np.clip(xs + dx, 0, SIZE - 1)] = True
        img[mask] = 235
        _save(img, root / "test" / "scratch" / f"{i:03d}.png")
        _save(mask * 255.0, root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    for i in range(30):
        img = _texture(rng)
        cy, cx = rng.integers(12, 52, 2)
        r = rng.uniform(4, 8)
        mask = (y - cy) ** 2 + (x - cx) ** 2 <= r**2
        img[mask] = img[mask] * 0.35
        _save(img, root / "test" / "stain" / f"{i:03d}.png")
        _save(mask * 255.0, root / "ground_truth" / "stain" / f"{i:03d}_mask.png")
    print(f"wrote {root}: train/good 120, test/good 30, test/scratch 30, test/stain 30, masks in ground_truth/")


PHOTOS = ("brick", "grass", "gravel")  # texture photographs scikit-image ships (skimage.data, no download)


def textures(out: Path, photo: str = "brick", foreign: str | None = None, size: int = SIZE, seed: int = 0) -> None:
    """Write the MVTec-layout category ``<out>/<photo>`` of ``size``×``size`` grey crops of one photograph.

    ``foreign`` is the photograph whose patch is pasted in as the ``foreign`` defect (default: gravel,
    or brick when ``photo`` is gravel). Defect sizes scale with ``size``; at the defaults (brick,
    gravel, 64, seed 0) the files are exactly those this command has always written. Raises
    ``ValueError`` for an unknown photograph, ``foreign == photo`` or a size outside 16 to a quarter of the
    photograph's height.
    """
    from skimage import data  # real photographs shipped with scikit-image (no download)

    foreign = foreign or ("brick" if photo == "gravel" else "gravel")
    for name in (photo, foreign):
        if name not in PHOTOS:
            raise ValueError(f"unknown photograph {name!r}; use one of {', '.join(PHOTOS)}")
    if photo == foreign:
        raise ValueError(f"--foreign must be another photograph than --photo ({photo})")
    rng = np.random.default_rng(seed)
    source, patch_source = (getattr(data, name)().astype(np.float64) for name in (photo, foreign))
    height = source.shape[0]
    train_rows, test_rows = (0, height * 3 // 4), (height * 3 // 4, height)
    if not 16 <= size <= test_rows[1] - test_rows[0]:
        raise ValueError(f"--size {size} must be 16 to {test_rows[1] - test_rows[0]} (the bottom quarter of {photo})")
    root = out / photo
    s = size / SIZE  # defect sizes below are given at 64 px

    def crop(rows: tuple[int, int], image: np.ndarray = source) -> np.ndarray:
        y, x = rng.integers(rows[0], rows[1] - size + 1), rng.integers(0, image.shape[1] - size + 1)
        return image[y : y + size, x : x + size].copy()

    def px(v: float) -> int:
        return round(v * s)

    for i in range(240):
        _save(crop(train_rows), root / "train" / "good" / f"{i:03d}.png")
    for i in range(40):
        _save(crop(test_rows), root / "test" / "good" / f"{i:03d}.png")
    y, x = np.mgrid[0:size, 0:size]
    for i in range(30):  # foreign material: a square of the other photograph
        img, side = crop(test_rows), int(rng.integers(px(10), px(18)))
        y0, x0 = rng.integers(px(4), size - side - px(4), 2)
        mask = np.zeros((size, size), bool)
        mask[y0 : y0 + side, x0 : x0 + side] = True
        img[mask] = crop((0, patch_source.shape[0]), patch_source)[:side, :side].ravel()
        _save(img, root / "test" / "foreign" / f"{i:03d}.png")
        _save(mask * 255.0, root / "ground_truth" / "foreign" / f"{i:03d}_mask.png")
    for i in range(30):  # scratch: a bright line, 2 px wide at 64 px
        img = crop(test_rows)
        x0, y0 = rng.integers(px(8), px(40), 2)
        length, angle = rng.integers(px(16), px(28)), rng.uniform(0, np.pi)
        t = np.linspace(0, 1, px(200))
        mask = np.zeros((size, size), bool)
        xs, ys = (x0 + t * length * np.cos(angle)).astype(int), (y0 + t * length * np.sin(angle)).astype(int)
        for dx in range(max(2, px(2))):
            mask[np.clip(ys, 0, size - 1), np.clip(xs + dx, 0, size - 1)] = True
        img[mask] = 240
        _save(img, root / "test" / "scratch" / f"{i:03d}.png")
        _save(mask * 255.0, root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    for i in range(30):  # smudge: darkened by a soft blob; the mask is where it darkens by > 20%
        img = crop(test_rows)
        cy, cx = rng.integers(px(14), px(50), 2)
        r = rng.uniform(5 * s, 9 * s)
        shade = 0.6 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r**2))
        _save(img * (1 - shade), root / "test" / "smudge" / f"{i:03d}.png")
        _save((shade > 0.2) * 255.0, root / "ground_truth" / "smudge" / f"{i:03d}_mask.png")
    print(
        f"wrote {root}: {size}x{size} crops of {photo} (foreign: {foreign}): train/good 240, test/good 40, "
        "test/foreign, scratch, smudge 30 each, masks in ground_truth/"
    )


def car_folder(out: Path, cifar: Path, n: int) -> None:
    images = []
    for b in range(1, 6):
        with open(cifar / "cifar-10-batches-py" / f"data_batch_{b}", "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        data = np.asarray(batch["data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        images += [img for img, label in zip(data, batch["labels"]) if label == 1]
    for i, img in enumerate(images[:n]):
        _save(img, out / "normal" / f"car_{i:05d}.png")
    print(f"wrote {min(n, len(images))} car images to {out / 'normal'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["mvtec", "textures", "car-folder"])
    p.add_argument("out", type=Path)
    p.add_argument("--cifar", type=Path, default=Path("data/cifar10"))
    p.add_argument("--n", type=int, default=1500)
    p.add_argument("--photo", choices=PHOTOS, default="brick", help="textures: the photograph (the category's name)")
    p.add_argument("--foreign", choices=PHOTOS, help="textures: the pasted photograph (default gravel; brick for gravel)")
    p.add_argument("--size", type=int, default=SIZE, help="textures: crop side in pixels (the data module resizes)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.what == "mvtec":
        mvtec(a.out, a.seed)
    elif a.what == "textures":
        try:
            textures(a.out, a.photo, a.foreign, a.size, a.seed)
        except ValueError as e:
            p.error(str(e))  # exit code 2
    else:
        car_folder(a.out, a.cifar, a.n)


if __name__ == "__main__":
    main()
