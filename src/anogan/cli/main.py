"""``anogan``: one command with a subcommand per entry point.

``anogan train|predict|export|serve|compare|report|sweep-summary [arguments]`` runs the same ``main``
as the ``anogan-<name>`` script of that name (``anogan-train`` and so on, kept as aliases), with the
same arguments: Hydra overrides for ``train``, ``key=value`` pairs for ``predict``/``export``/``serve``,
paths and options for the rest. ``anogan <command> --help`` prints that command's help.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module whose ``main`` runs it, one line for ``anogan --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("anogan.cli.train", "train a GAN and its scorer, then score and report (Hydra overrides)"),
    "predict": ("anogan.cli.predict", "score new images with a run's scorer.pt (ckpt=... input=...)"),
    "export": ("anogan.deploy.export", "export the encoder scorer to ONNX, checked against PyTorch (ckpt=...)"),
    "serve": ("anogan.deploy.serve", "serve a run's scorer over HTTP (ckpt=... port=...)"),
    "compare": ("anogan.metrics.compare", "compare two runs on the same images (paired bootstrap, DeLong)"),
    "report": ("anogan.reporting.report", "rebuild metrics.json and figures of finished runs from scores.csv"),
    "sweep-summary": ("anogan.reporting.sweep", "(re)build the summary table of a sweep folder"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: anogan <command> [arguments]   (anogan <command> --help for its own)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named by ``argv[0]`` with the rest of ``argv``; its exit code, 2 for an unknown one."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"anogan: unknown command {name!r}; use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"anogan {name}", *rest]  # the entry points that read sys.argv (Hydra's, argparse's) see only their own
    code = module.main()
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
