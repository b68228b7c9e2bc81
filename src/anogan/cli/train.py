"""``anogan train`` (``anogan-train``, ``python train.py``): the Hydra entry point of the pipeline.

    anogan train experiment=cifar_car_cpu data.root=../shared/data/cifar10 data.verify_checksums=false

Hydra composes the config from ``conf/`` and the overrides and calls ``anogan.engine.pipeline.run``
once (or once per job of a ``--multirun`` sweep, returning the job's objective, ``optimized_metric``,
to the sweeper). This module turns every failure of input into one line and an exit code.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.errors import HydraException, InstantiationException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from anogan.config.paths import conf_dir
from anogan.config.schema import explain_composition_error
from anogan.engine.bookkeeping import is_rank_zero
from anogan.engine.pipeline import run
from anogan.engine.run_folder import removed_if_unused
from anogan.utils.errors import UserError, user_error_in

log = logging.getLogger("anogan")
_job_started = False  # set once Hydra has composed the config and calls the job
_FULL_ERROR = "HYDRA_FULL_ERROR"
_user_full_error: str | None = None  # the user's own HYDRA_FULL_ERROR, restored when the job starts


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    """One job: the run's objective (NaN where this process has no result: ``plan=true``, DDP ranks > 0).
    Input errors end with exit code 2 and one line; a run that fails before producing anything
    leaves no empty run folder behind."""
    global _job_started
    _job_started = True
    _restore_full_error()  # errors of the job itself are reported as Hydra reports them
    with removed_if_unused(Path(cfg.paths.output_dir), enabled=is_rank_zero()):
        try:
            result = run(cfg)
        except UserError as err:
            log.error("%s", err)
            raise SystemExit(2) from None
        except InstantiationException as err:  # a setting refused by the target Hydra builds: its own line
            if (cause := user_error_in(err)) is None:
                raise
            log.error("%s", cause)
            raise SystemExit(2) from None
    return float("nan") if result is None else result.objective


def _restore_full_error() -> None:
    if _user_full_error is None:
        os.environ.pop(_FULL_ERROR, None)
    else:
        os.environ[_FULL_ERROR] = _user_full_error


def main() -> float | None:
    """The command line. A SIGTERM (a scheduler's stop, ``kill``) ends with exit code 143 and no
    ``metrics.json``, never 0. Input errors end with exit code 2 and one line: ours (``anogan.config.checks``) and
    Hydra's while it composes the config (a value of the wrong type, an unknown key, an override it
    cannot parse, an unknown config group option), which ``explain_composition_error`` rewrites;
    HYDRA_FULL_ERROR=1 set by the user keeps Hydra's own report."""
    global _user_full_error
    _user_full_error = os.environ.get(_FULL_ERROR)
    os.environ[_FULL_ERROR] = "1"  # Hydra raises composition errors instead of printing them
    try:
        return _hydra_main()
    except SIGTERMException:  # Lightning stops on SIGTERM with SystemExit() = exit code 0, as if it had finished
        log.error("stopped by SIGTERM: the run is not finished (no metrics.json); ckpt_path=last resumes its GAN training")
        raise SystemExit(128 + signal.SIGTERM) from None
    except SystemExit as stop:
        if stop.code == 1 and not _job_started:
            raise SystemExit(2) from None
        raise
    except (HydraException, OmegaConfBaseException) as err:  # composing the config (a job's own errors: re-raised)
        if _job_started or _user_full_error:
            raise
        print(f"Error: {explain_composition_error(err, sys.argv[1:])}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        _restore_full_error()


if __name__ == "__main__":
    main()
