"""Server benchmark: ``python benchmarks/serve_bench.py ckpt=<run folder or scorer.pt> [requests=96]
[clients=[1,8,32]] [max_batch_size=32] [batch_timeout=0.01] [image_size=<px>] [seed=0]`` prints one JSON object.

Starts ``anogan-serve`` on a free loopback port (127.0.0.1), waits for ``/health``, then for each
number of concurrent clients sends the same fixed number of ``POST /predict`` requests (one PNG
each, multipart field ``file``; random RGB images of ``image_size`` px, seeded, so every request
is scored) and reports requests per second and the p50 / p95 latency (seconds, from send to parsed
answer). Beside it, the same scorer called in process (``anogan.load(ckpt).predict`` on the same
images, in batches of ``max_batch_size``): images per second. Every request must answer 200.

Bounded: a fixed number of requests, loopback only, each request times out after 300 s, and the
server (its whole process group, started under ``timeout``) is stopped at the end whatever happens.
Threads: the server and the in-process scorer run with ``OMP_NUM_THREADS`` as set (1 if unset).
"""

from __future__ import annotations

import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BenchConfig:
    ckpt: str = "???"
    requests: int = 96
    clients: list[int] = field(default_factory=lambda: [1, 8, 32])
    max_batch_size: int = 32
    batch_timeout: float = 0.01
    image_size: int | None = None  # default: the run's image size
    seed: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pngs(n: int, size: int, seed: int) -> tuple[list[bytes], list[np.ndarray]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    blobs = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    return blobs, arrays


def _start(cfg, port: int, env: dict) -> subprocess.Popen:
    command = [
        "timeout",
        "1800",
        sys.executable,
        "-m",
        "anogan.deploy.serve",
        f"ckpt={cfg.ckpt}",
        f"port={port}",
        "host=127.0.0.1",
        "device=cpu",
        f"max_batch_size={cfg.max_batch_size}",
        f"batch_timeout={cfg.batch_timeout}",
    ]
    return subprocess.Popen(command, stdout=sys.stderr, stderr=sys.stderr, start_new_session=True, env=env)


def _wait_healthy(url: str, proc: subprocess.Popen, limit_s: float = 300) -> None:
    import requests

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server stopped with exit code {proc.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).text == "ok":
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not healthy after {limit_s} s")


def _load(url: str, blobs: list[bytes], clients: int) -> dict:
    import requests

    session_per_thread: dict[int, requests.Session] = {}

    def send(i: int) -> float:
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        start = time.perf_counter()
        answer = session.post(f"{url}/predict", files=[("file", (f"{i}.png", blobs[i]))], timeout=300)
        answer.json()
        if answer.status_code != 200:
            raise RuntimeError(f"request {i}: {answer.status_code} {answer.text[:200]}")
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(send, range(len(blobs))))
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(blobs),
        "requests_per_s": round(len(blobs) / wall, 2),
        "p50_s": round(statistics.median(latencies), 4),
        "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 4),
    }


def main(argv: list[str] | None = None) -> dict:
    from anogan.config.arguments import parse_key_values
    from anogan.utils.errors import UserError

    cfg = parse_key_values(sys.argv[1:] if argv is None else argv, BenchConfig, (__doc__ or "").splitlines()[0], UserError)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    import anogan

    detector = anogan.load(cfg.ckpt, device="cpu")
    size = cfg.image_size or detector.image_size
    blobs, arrays = _pngs(cfg.requests, size, cfg.seed)
    clients = [int(c) for c in cfg.clients]

    # in process: the same images through the same API, in batches of max_batch_size
    detector.predict(arrays[:2])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(arrays), cfg.max_batch_size):
        detector.predict(arrays[i : i + cfg.max_batch_size])
    in_process = len(arrays) / (time.perf_counter() - start)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(cfg, port, dict(os.environ))
    try:
        _wait_healthy(url, proc)
        _load(url, blobs[: min(8, len(blobs))], 2)  # warm-up
        results = [_load(url, blobs, c) for c in clients]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {
        "scorer": type(detector.scorer).__name__,
        "scorer_file": str(detector.artifact),
        "image_size_sent": size,
        "model_image_size": detector.image_size,
        "requests_per_level": cfg.requests,
        "max_batch_size": cfg.max_batch_size,
        "batch_timeout_s": cfg.batch_timeout,
        "server": results,
        "in_process_images_per_s": round(in_process, 2),
        "machine": {
            "cpus": os.cpu_count(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "commit": commit,
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
