"""Serve a finished run over HTTP with LitServe (``anogan-serve``; ``pip install anogan[serve]``):

    anogan-serve ckpt=<run folder or scorer.pt> [port=8000] [host=127.0.0.1] [device=auto|cpu|cuda]
                 [threshold=fpr|f1|youden|<number>] [max_batch_size=32] [batch_timeout=0.01]
                 [max_images=64] [max_bytes=20000000] [max_pixels=40000000] [max_request_pixels=50000000]
                 [max_response_bytes=10000000] [body_timeout=30] [drain_timeout=20] [workers=1] [timeout=300]

Endpoints:

* ``POST /predict``: one or several images, as multipart form data (one or more fields ``file``;
  optional field ``maps=true|full``) or as JSON ``{"images": ["<base64 of an image file>", ...],
  "maps": false|true|"full"}``. Answer: ``{"predictions": [{"score", "p_value", "label", "raw_score",
  "residual", "discrimination", "complexity", "steps", "notes"[, "map"]}, ...], "threshold", "rule",
  "warnings"}`` in the order sent; ``map`` is the anomaly map at the model's resolution (S lists of
  S floats) with ``maps=true``, at the image's own size (H lists of W floats) with ``maps=full``;
  ``notes`` what reading the image interpreted (``anogan.data.notes``), and ``warnings`` one line
  per such image (its file name: ``"<name>: <notes>"``) then the others.
  ``threshold`` is ``null`` where it is infinite (then ``warnings`` says so).
* ``GET /``: the page for people (``anogan.deploy.page``); ``maps=png`` (the page's option): pictures
  instead of the map's floats (``page.pictures``); ``/info`` carries the run's facts (``page.run_facts``).
* ``GET /health``: ``ok`` (200) once the scorer is loaded; ``ok; warning: ...`` when the scorer
  file on disk is no longer the one served. ``GET /info``: the run's settings, the served file's
  ``sha256`` and ``loaded_at``.

Every image goes through ``anogan.deploy.detector.Detector.predict`` (the same preprocessing,
inference path and calibration as ``anogan-predict`` and the run itself); requests that arrive
together are scored together (LitServe's dynamic batching: up to ``max_batch_size`` requests,
waiting at most ``batch_timeout`` seconds). Only the scorer file is read (``weights_only``), once, by
the main process; its checked bytes go to every inference worker, so ``/info`` describes exactly the
model that scores. The server listens on the loopback interface unless ``host`` says otherwise.

A bad request gets a 4xx answer ``{"detail": "<one line>"}`` and the server goes on: the request's
envelope is checked before it is queued (``anogan.deploy.middleware``: body size and arrival time,
content type, fields, image count), its images' headers before decoding (``anogan.deploy.scorer_api``:
``max_pixels``, ``max_request_pixels``, ``max_response_bytes``).

Shutdown (``anogan.deploy.server.DrainingServer``): SIGTERM or SIGINT, to the main process or its
whole process group (``docker stop``, systemd), stops accepting connections, lets the requests in
flight finish for up to ``drain_timeout`` seconds, answers those still unfinished with 503, stops
every child process (the port is free), logs one line and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from anogan.config.arguments import ServeConfig, parse_key_values
from anogan.deploy.middleware import API_PATH
from anogan.deploy.server import build_server, stop_children
from anogan.utils.errors import ServeError, UserError

try:  # the serve extra; without it the command line says what to install
    import litserve as ls
except ImportError:  # pragma: no cover - depends on the installation
    ls = None

__all__ = ["USAGE", "main"]

log = logging.getLogger("anogan.deploy.serve")

USAGE = (
    "usage: anogan-serve ckpt=<run folder or scorer.pt> [port=8000] [host=127.0.0.1] [device=auto|cpu|cuda] "
    "[threshold=fpr|f1|youden|<number>] [max_batch_size=32] [batch_timeout=0.01] [max_images=64] "
    "[max_bytes=20000000] [max_pixels=40000000] [max_request_pixels=50000000] [max_response_bytes=10000000] "
    "[body_timeout=30] [drain_timeout=20] [workers=1] [timeout=300]"
)


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT (to this process or its group), then drain and stop
    (``DrainingServer``): exit 0, one log line. A bad setting or scorer file: one line, exit 2."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        cfg = parse_key_values(sys.argv[1:] if argv is None else argv, ServeConfig, USAGE, ServeError)
        if ls is None:
            raise ServeError("anogan-serve needs LitServe: pip install 'anogan[serve]'")
        server = build_server(cfg)
    except UserError as err:
        log.error("%s", err)
        return 2
    log.info("serving %s on http://%s:%d%s (health: /health)", Path(cfg.ckpt), cfg.host, cfg.port, API_PATH)
    main_pid = os.getpid()
    received: list[tuple[int, float]] = []  # (signal, when)

    def on_signal(sig: int, frame: object) -> None:
        # Forked children (LitServe's queue manager; the API processes once uvicorn hands the
        # signal back) inherit this handler: there it does nothing, the main process stops them.
        if os.getpid() != main_pid or received:
            return
        received.append((sig, time.monotonic()))
        raise KeyboardInterrupt  # LitServe's run() answers it with the (draining) shutdown

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        server.run(host=cfg.host, port=cfg.port, generate_client_file=False, num_api_servers=1, log_level="warning")
    except KeyboardInterrupt:  # a signal before LitServe's run() was listening for it
        pass
    except Exception as err:  # a worker that failed to start, or died
        log.error("anogan-serve stopped: %s", " ".join(str(err).split()) or type(err).__name__)
        code = 2 if "failed to start" in str(err) else 1
    finally:
        stop_children()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        sig, at = received[0]
        log.info(
            "anogan-serve stopped on %s in %.1f s (drain_timeout=%g s): every process ended, port %d free",
            signal.Signals(sig).name,
            time.monotonic() - at,
            cfg.drain_timeout,
            cfg.port,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
