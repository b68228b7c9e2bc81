"""AUROC against scoring cost for every scorer, on the same GANs and the same images:

    python benchmarks/scoring_curve.py outputs/multirun/<sweep>/seed=0 outputs/multirun/<sweep>/seed=1 ... \
        [--steps 50 100 200 400] [--hybrid 5 10 25 50] [--encoder-epochs 20] [--out docs/figures/scoring_curve]
    python benchmarks/scoring_curve.py --combine seed0.json seed1.json seed2.json --out docs/figures/scoring_curve

Each argument is a finished train.py run folder: its scorer file gives the GAN (and its seed), its
config the data (the same validation and test images). Per run, the f-AnoGAN encoder is trained once
and shared by the encoder scorer and every hybrid (z0 = E(x), then K search steps); each scorer runs
through ``anogan.engine.inference.run_scorer``, timed, with and without per-image early stopping. The
primary score follows the run's ``mapping.correction`` (``auto``: resolved on validation only).
Writes ``<out>.json``, ``<out>.md`` (mean ± std over runs) and ``<out>.png`` (validation and test
AUROC against image-steps per image). Test AUROC is reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from anogan.engine.artifact import gan_from_artifact, read_artifact
from anogan.engine.inference import run_scorer
from anogan.post_processing.calibration import Calibration
from anogan.post_processing.scores import complexity
from anogan.reporting.report import build_table, compute_metrics
from anogan.scorers import EncoderScorer, EncoderSearch, LatentMapping
from anogan.utils.io import atomic_savefig, atomic_write_text

STOP = {"patience": 10, "rel_tol": 1e-3}


def curve_for_run(run: Path, a: argparse.Namespace) -> list[dict]:
    cfg = OmegaConf.load(run / "config_resolved.yaml")
    payload = read_artifact(run / "scorer.pt")
    seed = int(cfg.seed)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    g, d = gan_from_artifact(payload)
    trainer = {
        "accelerator": "cpu" if not torch.cuda.is_available() else "auto",
        "devices": 1,
        "precision": "32-true",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
    }
    correction = a.correction or cfg.mapping.get("correction", "none")
    bs = a.batch_size
    t0 = time.perf_counter()
    encoder = EncoderScorer(
        g, d, width=int(cfg.model.d_width), epochs=a.encoder_epochs, batch_size=bs, correction=correction, seed=seed, maps=False
    )
    encoder.fit(dm.train_dataloader(), trainer)
    encoder_fit_s = time.perf_counter() - t0
    enc_cfg = {"width": int(cfg.model.d_width), "kappa": 1.0, "epochs": a.encoder_epochs, "lr": 1e-4, "betas": [0.5, 0.999]}

    configs = [("encoder", 0, False, lambda: encoder)]
    for k in a.steps:
        for stop in (False, True):
            configs.append(
                (
                    "latent",
                    k,
                    stop,
                    lambda k=k, stop=stop: LatentMapping(
                        g,
                        d,
                        alpha=0.0,
                        iterations=k,
                        lr=1e-3,
                        early_stop=STOP if stop else None,
                        batch_size=bs,
                        correction=correction,
                        seed=seed,
                        maps=False,
                    ),
                )
            )
    for k in a.hybrid:
        for stop in (False, True):

            def make(k=k, stop=stop):
                h = EncoderSearch(
                    g,
                    d,
                    encoder=enc_cfg,
                    alpha=0.0,
                    iterations=k,
                    lr=1e-3,
                    early_stop=STOP if stop else None,
                    batch_size=bs,
                    correction=correction,
                    seed=seed,
                    maps=False,
                )
                h.encoder.load_state_dict(encoder.encoder.state_dict())
                return h

            configs.append(("hybrid", k, stop, make))
    rows = []
    for kind, k, stop, make in configs:
        scorer = make()
        t0 = time.perf_counter()
        results = run_scorer(scorer, dm.eval_set, trainer)
        wall = time.perf_counter() - t0
        val = torch.from_numpy(dm.eval_split == "val")
        calibration = Calibration.fit(
            {k: v[val] for k, v in results.items() if k in ("score", "residual", "discrimination")},
            complexity(dm.eval_set.images[val]),
            dm.eval_set.labels[val],
            correction,
        )
        table = build_table(results, dm, calibration)
        metrics = compute_metrics(table, calibration.correction, thresholds=calibration.thresholds)
        steps = float(results["steps"].double().mean())
        rows.append(
            {
                "run": str(run),
                "seed": seed,
                "scorer": kind,
                "K": k,
                "early_stop": stop,
                "mean_steps": round(steps, 1),
                "val_auroc": metrics["val"]["auroc"],
                "test_auroc": metrics["test"]["auroc"],
                "scoring_s": round(wall, 1),
                "images": len(table["score"]),
                "correction": calibration.correction,
                "extra_fit_s": round(encoder_fit_s, 1) if kind != "latent" else 0.0,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["scorer"], r["K"], r["early_stop"]), []).append(r)
    out = []
    for (kind, k, stop), rs in groups.items():

        def ms(key, rs=rs):
            v = [r[key] for r in rs]
            return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

        out.append(
            {
                "scorer": kind,
                "K": k,
                "early_stop": stop,
                "runs": len(rs),
                "mean_steps": ms("mean_steps"),
                "val_auroc": ms("val_auroc"),
                "test_auroc": ms("test_auroc"),
                "scoring_s": ms("scoring_s"),
                "extra_fit_s": ms("extra_fit_s"),
            }
        )
    return out


def write(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"rows": rows, "summary": summary}, indent=1))
    # Cost ratios are taken per run (the same process, side by side), then averaged over runs.
    base_s = {r["run"]: r["scoring_s"] for r in rows if r["scorer"] == "latent" and r["K"] == 200 and not r["early_stop"]}
    lines = [
        "| scorer | steps (K) | early stop | mean steps used | val AUROC | test AUROC | scoring s | "
        "scoring time vs 200-step search | + encoder training s | incl. encoder training |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        rs = [
            r
            for r in rows
            if (r["scorer"], r["K"], r["early_stop"]) == (s["scorer"], s["K"], s["early_stop"]) and r["run"] in base_s
        ]
        ratio = with_fit = "-"
        if rs:
            ratio = f"{statistics.mean(r['scoring_s'] / base_s[r['run']] for r in rs):.3f}×"
            with_fit = f"{statistics.mean((r['scoring_s'] + r['extra_fit_s']) / base_s[r['run']] for r in rs):.2f}×"
        lines.append(
            f"| {s['scorer']} | {s['K']} | {'yes' if s['early_stop'] else 'no'} | {s['mean_steps'][0]:.1f} | "
            f"{s['val_auroc'][0]:.3f} ± {s['val_auroc'][1]:.3f} | {s['test_auroc'][0]:.3f} ± {s['test_auroc'][1]:.3f} | "
            f"{s['scoring_s'][0]:.1f} | {ratio} | {s['extra_fit_s'][0]:.1f} | {with_fit} |"
        )
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, ("val_auroc", "test_auroc")):
        for kind, marker in (("latent", "o"), ("hybrid", "s"), ("encoder", "*")):
            for stop, style in ((False, "-"), (True, "--")):
                pts = sorted(
                    (s["mean_steps"][0], s[split][0], s[split][1])
                    for s in summary
                    if s["scorer"] == kind and s["early_stop"] == stop
                )
                if not pts:
                    continue
                x = [max(p[0], 0.5) for p in pts]
                ax.errorbar(
                    x,
                    [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    fmt=marker + style,
                    capsize=3,
                    label=f"{kind}{' + early stop' if stop else ''}",
                )
        title = "validation AUROC (chooses)" if split == "val_auroc" else "test AUROC (reported, never chooses)"
        ax.set(xscale="log", xlabel="search steps per image, mean used (encoder: 0, drawn at 0.5)", title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"AUROC (mean ± std over {len({r['run'] for r in rows})} runs)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, out.with_suffix(".png"), dpi=100)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="finished train.py run folders (one per seed)")
    p.add_argument(
        "--combine",
        type=Path,
        nargs="*",
        default=[],
        help="<out>.json files of earlier calls (e.g. one process per seed) whose rows are added",
    )
    p.add_argument("--steps", type=int, nargs="*", default=[50, 100, 200, 400], help="random-start search steps")
    p.add_argument("--hybrid", type=int, nargs="*", default=[5, 10, 25, 50], help="refinement steps K after E(x)")
    p.add_argument("--encoder-epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--correction", default=None, help="override the runs' mapping.correction")
    p.add_argument("--out", type=Path, default=Path("outputs/scoring_curve"))
    a = p.parse_args(argv)
    rows = [r for f in a.combine for r in json.loads(f.read_text())["rows"]]
    for run in a.runs:
        rows += curve_for_run(run, a)
        write(rows, a.out)  # after every run: an interruption keeps the finished runs
    if not rows:
        p.error("give run folders or --combine files")
    write(rows, a.out)
    print((a.out.with_suffix(".md")).read_text())


if __name__ == "__main__":
    main()
