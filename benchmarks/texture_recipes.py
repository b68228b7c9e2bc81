"""Choose the texture recipe on several real-photograph sets (docs/scorers.md, "Texture recipe on several
photographs"): every recipe is ``experiment=small_textures`` plus a few overrides, run on each set built by
``benchmarks/make_demo_data.py textures <sets> --photo <photo>``; the recipe with the highest **mean
validation image AUROC over the sets** wins (test figures are reported, never used to choose).

    python benchmarks/make_demo_data.py textures /tmp/demo/textures --photo brick   # and grass, gravel
    python benchmarks/texture_recipes.py --sets /tmp/demo/textures --runs runs/texture_recipes
    python benchmarks/texture_recipes.py --sets /tmp/demo/textures --runs runs/texture_recipes --table-only

Runs are ``python train.py experiment=small_textures data=mvtec data.root=<sets> data.category=<photo>
seed=<seed> trainer.max_epochs=<epochs> hydra.run.dir=<runs>/<photo>/<recipe> <overrides>`` (a finished
run, one with metrics.json, is not rerun). A recipe is a GAN (self-supervised or plain D), its epochs and
scorer overrides. The GAN is trained once per set: a run that trains one keeps snapshots every 15 epochs
(``snaps/``), and the recipes with the same GAN and as many or fewer epochs score it or its snapshot
(``gan.checkpoint``): with the cosine warm-restart schedule (T0 15, T_mult 2, which does not depend on
``max_epochs``) the GAN after 15 or 45 of 60 epochs should have the weights a 15- or 45-epoch run trains
(by the schedule; not checked bit for bit).
Prints one JSON object (every run's figures and the choice) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT_EVERY = 15  # the cosine warm-restart schedule's first period: restarts after epochs 15, 45, 105
GANS: dict[str, list[str]] = {"ssd": [], "plain_d": ["model.self_supervised=null"]}  # D with / without rotation head
# name -> (GAN, its epochs, scorer overrides), all on top of experiment=small_textures
RANDOM = ["mapping.coreset=random"]  # a seeded random cell bank: minutes faster than the greedy coreset at 64 px
RECIPES: dict[str, tuple[str, int, list[str]]] = {
    "preset": ("ssd", 60, []),
    "preset_random": ("ssd", 60, RANDOM),
    "preset_layer1": ("ssd", 60, ["mapping.patch_layer=1"]),
    "preset_layer3": ("ssd", 60, ["mapping.patch_layer=3"]),
    "epochs15": ("ssd", 15, []),
    "epochs15_random": ("ssd", 15, RANDOM),
    "epochs15_layer1": ("ssd", 15, ["mapping.patch_layer=1"]),
    "epochs15_layer3": ("ssd", 15, ["mapping.patch_layer=3"]),
    "epochs15_neighbourhood1": ("ssd", 15, [*RANDOM, "mapping.patch_neighbourhood=1"]),
    "epochs45_random": ("ssd", 45, RANDOM),
    "epochs15_plain_d_random": ("plain_d", 15, RANDOM),
    "plain_d": ("plain_d", 60, []),
}


def gan_source(recipe: str, photo: str, runs: Path, done: dict[tuple[str, int], Path]) -> list[str]:
    """How a run gets its GAN: ``gan.checkpoint`` of a finished run of the same GAN and epochs, or the
    snapshot after ``epochs`` of a longer run of the same GAN (same schedule, so the same weights), or
    nothing (the run trains it, keeping snapshots every SNAPSHOT_EVERY epochs)."""
    gan, epochs, _ = RECIPES[recipe]
    for (g, e), run in sorted(done.items(), key=lambda item: item[0][1]):
        if g != gan or e < epochs:
            continue
        if e == epochs:
            return [f"gan.checkpoint={run / 'gan'}"]
        found = sorted((run / "snaps").glob(f"epoch={epochs - 1}-*.ckpt"))
        if found:
            return [f"gan.checkpoint='{found[0]}'"]  # quoted: the file name holds '='
    return [
        "+callbacks.snaps._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        "+callbacks.snaps.dirpath=${paths.output_dir}/snaps",
        "+callbacks.snaps.save_top_k=-1",
        f"+callbacks.snaps.every_n_epochs={SNAPSHOT_EVERY}",
    ]


def command(
    recipe: str, photo: str, sets: Path, runs: Path, seed: int, threads: int, source: list[str], extra: list[str]
) -> list[str]:
    gan, epochs, scorer = RECIPES[recipe]
    return [
        sys.executable,
        str(REPO / "train.py"),
        "experiment=small_textures",
        "data=mvtec",
        f"data.root={sets}",
        f"data.category={photo}",
        f"seed={seed}",
        f"threads={threads}",
        "logger=csv",
        "gan.cache=false",
        f"hydra.run.dir={runs / photo / recipe}",
        f"trainer.max_epochs={epochs}",
        *GANS[gan],
        *scorer,
        *source,
        *extra,
    ]


def summary(run: Path) -> dict:
    """The figures of one finished run, read from its metrics.json."""
    m = json.loads((run / "metrics.json").read_text())
    versus = m.get("versus_complexity_baseline") or {}
    health = m.get("gan_health") or {}
    return {
        "val_auroc": m["val"]["auroc"],
        "test_auroc": m["test"]["auroc"],
        "test_pixel_auroc": (m.get("pixel") or {}).get("auroc"),
        "test_aupro": (m.get("pixel") or {}).get("aupro"),
        "val_complexity_only": (versus.get("val") or {}).get("auroc_complexity_only"),
        "test_complexity_only": (versus.get("test") or {}).get("auroc_complexity_only"),
        "gan_ok": health.get("ok"),
        "gan_flags": health.get("flags", []),
        "gan_source": m.get("gan_source"),
        "wall_s": (m.get("wall_time_s") or {}).get("total"),
        "warnings": len(m.get("warnings") or []),
    }


def choose(results: dict[str, dict[str, dict]], photos: list[str]) -> dict:
    """Mean validation image AUROC of each recipe over the sets it finished on all of; the highest wins."""
    means = {
        recipe: float(np.mean([per_set[p]["val_auroc"] for p in photos]))
        for recipe, per_set in results.items()
        if all(p in per_set for p in photos)
    }
    return {
        "rule": "highest mean validation image AUROC over the sets",
        "mean_val_auroc": means,
        "chosen": max(means, key=means.__getitem__) if means else None,
    }


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown(results: dict[str, dict[str, dict]], choice: dict) -> str:
    lines = [
        "| recipe | set | **val image AUROC** (chooses) | test image AUROC | test pixel AUROC | test AUPRO | complexity only val / test | G healthy | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for recipe, per_set in results.items():
        for photo, r in per_set.items():
            health = "yes" if r["gan_ok"] else ("no (" + ", ".join(r["gan_flags"]) + ")" if r["gan_flags"] else "–")
            lines.append(
                f"| {recipe} | {photo} | {_f(r['val_auroc'])} | {_f(r['test_auroc'])} | {_f(r['test_pixel_auroc'])} | "
                f"{_f(r['test_aupro'])} | {_f(r['val_complexity_only'])} / {_f(r['test_complexity_only'])} | {health} | "
                f"{r['wall_s'] if r['wall_s'] is not None else '–'} |"
            )
    lines += ["", "| recipe | mean val image AUROC |", "| --- | --- |"]
    lines += [f"| {'**' + k + '**' if k == choice['chosen'] else k} | {v:.3f} |" for k, v in choice["mean_val_auroc"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", type=Path, required=True, help="folder holding the category folders (make_demo_data.py textures)")
    p.add_argument("--runs", type=Path, required=True, help="folder for the run folders and the GAN cache")
    p.add_argument("--photos", nargs="+", default=["brick", "grass", "gravel"])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table-only", action="store_true", help="only read the finished runs")
    p.add_argument("--prefix", default="", help="a command to run each train.py under, e.g. 'nice -n 10 flock /tmp/cpu.lock'")
    p.add_argument("extra", nargs="*", help="more overrides for every run (e.g. trainer.max_epochs=2 for a smoke test)")
    a = p.parse_args(argv)
    for photo in a.photos:
        if not (a.sets / photo / "train" / "good").is_dir():
            p.error(f"--sets {a.sets}: no {photo}/train/good; build it with make_demo_data.py textures {a.sets} --photo {photo}")
    # per GAN, the longest recipe first (in the order given): it trains, the others score its GAN or snapshots
    order = sorted(a.recipes, key=lambda r: -RECIPES[r][1])
    results: dict[str, dict[str, dict]] = {r: {} for r in a.recipes}
    for photo in a.photos:
        # GANs already trained here (gan/ is written when GAN training ends), even where scoring did not finish
        done = {
            (RECIPES[r][0], RECIPES[r][1]): a.runs.resolve() / photo / r
            for r in RECIPES
            if (a.runs / photo / r / "snaps").is_dir()
        }
        done = {k: v for k, v in done.items() if (v / "gan").is_dir()}
        for recipe in order:
            run = a.runs.resolve() / photo / recipe
            gan, epochs, scorer = RECIPES[recipe]
            if not a.table_only and not (run / "metrics.json").exists():
                source = gan_source(recipe, photo, a.runs.resolve(), done)
                cmd = command(recipe, photo, a.sets.resolve(), a.runs.resolve(), a.seed, a.threads, source, a.extra)
                print("+", " ".join(cmd[1:]), file=sys.stderr, flush=True)
                subprocess.run(
                    [*shlex.split(a.prefix), *cmd], check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)}
                )
            if (run / "metrics.json").exists():
                results[recipe][photo] = summary(run)
                if (run / "gan").is_dir() and ((gan, epochs) not in done or (run / "snaps").is_dir()):
                    done[(gan, epochs)] = run
    choice = choose(results, a.photos)
    print(json.dumps({"seed": a.seed, "sets": a.photos, "runs": results, **choice}, indent=1))
    print(markdown(results, choice))


if __name__ == "__main__":
    main()
