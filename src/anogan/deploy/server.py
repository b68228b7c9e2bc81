"""The server of ``anogan-serve``: ``build_server`` checks the settings and the scorer file (read
once, by the main process) and builds LitServe's server over ``ScorerAPI`` with the middlewares
and the page; ``DrainingServer`` gives it a shutdown that lets the requests in flight finish."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anogan.config.fields import parse_threshold
from anogan.deploy.middleware import RequestGate, ScorerFileWatch
from anogan.deploy.page import add_page, run_facts
from anogan.deploy.scorer_api import ScorerAPI, finite_or_none
from anogan.utils.errors import ServeError

try:  # the serve extra; without it the command line says what to install
    import litserve as ls
except ImportError:  # pragma: no cover - depends on the installation
    ls = None

if TYPE_CHECKING:
    from omegaconf import DictConfig


class DrainingServer(ls.LitServer if ls is not None else object):  # type: ignore[misc]
    """LitServe's server with a shutdown that drains (``main`` turns SIGTERM/SIGINT into it):
    the main process closes its copy of the listening socket; each API process gets SIGTERM, on
    which uvicorn stops accepting and waits up to ``drain_timeout`` seconds for the requests in
    flight (``RequestGate`` answers 503 to those it then cancels); once the API processes have
    ended nothing is in flight, and the inference workers (which ignore SIGTERM) and LitServe's
    queue manager are stopped. Runs once, whoever calls it (signal or LitServe's worker monitor)."""

    drain_timeout = 20.0
    listen_sockets: list = []
    stopped = False

    def _start_server(self, port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs):  # type: ignore[no-untyped-def]
        self.listen_sockets = list(sockets or [])
        return super()._start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs)

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason="normal"):  # type: ignore[no-untyped-def]
        if self.stopped:
            return
        self.stopped = True
        for sock in self.listen_sockets:
            sock.close()
        api_processes = [w for w in uvicorn_workers.values() if hasattr(w, "terminate")]
        for w in api_processes:
            if w.is_alive():
                w.terminate()
        deadline = time.monotonic() + self.drain_timeout + 10  # uvicorn's own deadline, then its 503s and exit
        for w in api_processes:
            w.join(max(0.1, deadline - time.monotonic()))
            if w.is_alive():
                w.kill()
                w.join(5)
        for worker in getattr(self, "inference_workers", []):
            worker.kill()
            worker.join(5)
        self._transport.close(send_sentinel=False)
        manager.shutdown()


def stop_children(timeout: float = 5.0) -> None:
    """Every child process this one started that is still running: SIGTERM, then SIGKILL after
    ``timeout`` seconds (the last guard against orphans, e.g. a signal during start-up)."""
    import multiprocessing

    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join(timeout)


def build_server(cfg: DictConfig) -> Any:
    """The ``litserve.LitServer`` for ``cfg`` (a structured ``ServeConfig``), not yet running. The
    scorer file is read here, once: its checked bytes and sha256 go to every worker and to ``/info``.
    Raises ``ServeError`` / ``InputError`` / ``ArtifactError`` (one line) for a bad setting or file."""
    import torch

    from anogan.deploy.detector import trainer_settings
    from anogan.engine.artifact import resolve_path

    artifact = resolve_path(cfg.ckpt)
    threshold = None if cfg.threshold is None else parse_threshold(cfg.threshold)  # checked by ServeConfig's rule
    trainer_settings(cfg.device, "32-true")  # device=cuda without a GPU: one line now, not in the worker
    check_settings(cfg)
    data, st = read_scorer(artifact)
    metadata = model_metadata(artifact, data, threshold)
    api = ScorerAPI(
        str(artifact),
        cfg.device,
        threshold,
        cfg.max_batch_size,
        cfg.batch_timeout,
        cfg.max_pixels,
        data=data,
        sha256=metadata["sha256"],
        max_request_pixels=cfg.max_request_pixels,
        max_response_bytes=cfg.max_response_bytes,
    )
    on_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    server = DrainingServer(
        api,
        accelerator="cuda" if on_gpu else "cpu",
        devices=1,
        workers_per_device=cfg.workers,
        timeout=cfg.timeout,
        model_metadata=metadata,
        middlewares=[
            (RequestGate, {"max_bytes": cfg.max_bytes, "max_images": cfg.max_images, "body_timeout": cfg.body_timeout}),
            (
                ScorerFileWatch,
                {"path": str(artifact), "sha256": metadata["sha256"], "stat_key": (st.st_size, st.st_mtime_ns, st.st_ino)},
            ),
        ],
    )
    add_page(server.app)  # GET /: the page for people (anogan.deploy.page)
    server.drain_timeout = float(cfg.drain_timeout)
    server.uvicorn_graceful_timeout = float(cfg.drain_timeout)  # uvicorn's timeout_graceful_shutdown in each API process
    return server


def check_settings(cfg: DictConfig) -> None:
    """The settings that involve two keys (each key's own range is ``ServeConfig``'s rule, checked when
    the command line is parsed): ``ServeError`` (one line naming both) otherwise."""
    if cfg.batch_timeout >= cfg.timeout:
        raise ServeError(f"batch_timeout={cfg.batch_timeout}, timeout={cfg.timeout}: use batch_timeout < timeout")


def read_scorer(artifact: Path) -> tuple[bytes, os.stat_result]:
    """The scorer file's bytes and its ``stat`` (what ``ScorerFileWatch`` compares against);
    ``ServeError`` (one line) when it cannot be read."""
    try:
        data = artifact.read_bytes()
        st = artifact.stat()
    except OSError as err:
        raise ServeError(f"cannot read {artifact}: {err.strerror or err}") from None
    return data, st


def model_metadata(artifact: Path, data: bytes, threshold: str | float | None) -> dict[str, Any]:
    """What ``/info`` says of the served model: the file, its ``sha256``, ``size_bytes`` and
    ``loaded_at`` (UTC), the run's preprocessing, rules and provenance. ``data`` (the file's bytes)
    is checked here by loading it: a bad file is one line before any worker starts."""
    from anogan.deploy.detector import Detector
    from anogan.engine.artifact import file_digest

    loaded_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sha256 = file_digest(data)
    detector = Detector(artifact, device="cpu", data=data)
    return {
        "scorer_file": str(artifact),
        "sha256": sha256,
        "size_bytes": len(data),
        "loaded_at": loaded_at,
        "scorer": type(detector.scorer).__name__,
        "image_size": detector.image_size,
        "channels": detector.channels,
        "resize": detector.resize,
        "rule": detector.rule if threshold is None else threshold,
        "thresholds": {k: finite_or_none(v) if isinstance(v, (int, float)) else v for k, v in detector.thresholds.items()},
        "provenance": {k: str(v) for k, v in detector.provenance.items()},
        "run": run_facts(artifact),
    }
