"""Server benchmark: ``python benchmarks/serve_bench.py ckpt=<run folder or scorer.pt> [requests=96]
[clients=[1,8,32]] [max_batch_size=32] [batch_timeout=0.01] [image_size=<px>] [seed=0]
[mode=throughput|soak] [soak_seconds=20] [drain_timeout=20]`` prints one JSON object.

``mode=soak``: for each number of ``clients``, ``soak_seconds`` of mixed requests (three good
PNGs in four; the fourth one of several bad kinds: not an image, a wrong field, malformed JSON, a
body over ``max_bytes``), then SIGTERM to the server's main process with 32 clients' good requests
in flight. It reports per level the throughput, p50 / p95 latency and the answers by kind; the
server's resident memory (all its processes) before and after the soak; the requests in flight at
the signal that were answered 200 (drained), 503, or not at all; the server's exit code and the
processes of it left 10 s later.

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

import contextlib
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
    mode: str = "throughput"  # or soak
    soak_seconds: float = 20.0
    drain_timeout: float = 20.0


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
        f"drain_timeout={cfg.drain_timeout}",
        "max_bytes=1000000",
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


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    from pathlib import Path

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _rss_mb(pgid: int) -> float:
    """Resident memory of the server's processes (sum, MB; shared pages counted in each)."""
    from pathlib import Path

    total = 0
    for pid in _group(pgid):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return round(total / 1e6, 1)


BAD = {  # kind -> request keyword arguments
    "not_an_image": {"files": [("file", ("bad.bin", b"\x00" * 64))]},
    "wrong_field": {"files": [("image", ("a.png", b"x"))]},
    "bad_json": {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
    "too_large": {"data": b"x" * 1_000_001, "headers": {"Content-Type": "application/json"}},
}


def _send(session, url: str, kwargs: dict) -> str:
    """One request's outcome: its HTTP status, or the kind of error."""
    import requests

    try:
        answer = session.post(f"{url}/predict", timeout=300, **kwargs)
        answer.content  # noqa: B018  (read the whole answer)
        return str(answer.status_code)
    except requests.ConnectionError:
        return "connection_error"
    except requests.Timeout:
        return "timeout"


def _soak_level(url: str, blobs: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` threads sending mixed requests for ``seconds``: throughput, latency, answers."""
    import threading

    import requests

    stop = time.monotonic() + seconds
    records: list[tuple[str, bool, str, float]] = []  # (kind sent, good?, outcome, latency)
    lock = threading.Lock()

    def client(c: int) -> None:
        session, i = requests.Session(), c
        while time.monotonic() < stop:
            if i % 4 == 3:
                kind = list(BAD)[(i // 4) % len(BAD)]
                kwargs = BAD[kind]
            else:
                kind, kwargs = "good", {"files": [("file", (f"{i}.png", blobs[i % len(blobs)]))]}
            start = time.perf_counter()
            outcome = _send(session, url, kwargs)
            with lock:
                records.append((kind, kind == "good", outcome, time.perf_counter() - start))
            i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = sorted(r[3] for r in records if r[1] and r[2] == "200")
    kinds: dict[str, int] = {}
    for kind, _, outcome, _ in records:
        kinds[f"{kind}:{outcome}"] = kinds.get(f"{kind}:{outcome}", 0) + 1
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(records),
        "requests_per_s": round(len(records) / wall, 2),
        "good_p50_s": round(statistics.median(latencies), 4) if latencies else None,
        "good_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 4) if latencies else None,
        "answers_by_kind": dict(sorted(kinds.items())),
    }


def _sigterm_in_flight(url: str, blobs: list[bytes], proc: subprocess.Popen, clients: int = 32) -> dict:
    """``clients`` good requests sent at once, SIGTERM to the main process 0.5 s later: what became
    of the requests in flight, the exit code, the processes left."""
    from pathlib import Path

    import requests

    main_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])  # the child of `timeout`
    with ThreadPoolExecutor(clients) as pool:
        sent = [
            pool.submit(_send, requests.Session(), url, {"files": [("file", ("g.png", blobs[i % len(blobs)]))]})
            for i in range(clients)
        ]
        time.sleep(0.5)
        signalled = time.perf_counter()
        os.kill(main_pid, signal.SIGTERM)
        outcomes = [f.result() for f in sent]
    code = proc.wait(timeout=600)
    stopped_s = time.perf_counter() - signalled
    time.sleep(10)
    return {
        "in_flight": clients,
        "drained_200": outcomes.count("200"),
        "answered_503": outcomes.count("503"),
        "failed_other": clients - outcomes.count("200") - outcomes.count("503"),
        "exit_code": code,
        "stopped_in_s": round(stopped_s, 1),
        "processes_left": len(_group(proc.pid)),
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
    if cfg.mode == "soak":
        return _soak(cfg, detector, blobs, clients, size)
    if cfg.mode != "throughput":
        raise UserError(f"mode={cfg.mode!r}: use throughput or soak")

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


def _soak(cfg, detector, blobs: list[bytes], clients: list[int], size: int) -> dict:
    import torch

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(cfg, port, dict(os.environ))
    try:
        _wait_healthy(url, proc)
        _load(url, blobs[: min(8, len(blobs))], 2)  # warm-up
        rss_before = _rss_mb(proc.pid)
        levels = [_soak_level(url, blobs, c, cfg.soak_seconds) for c in clients]
        rss_after = _rss_mb(proc.pid)
        shutdown = _sigterm_in_flight(url, blobs, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {
        "mode": "soak",
        "scorer": type(detector.scorer).__name__,
        "image_size_sent": size,
        "soak_seconds_per_level": cfg.soak_seconds,
        "drain_timeout_s": cfg.drain_timeout,
        "levels": levels,
        "rss_mb_before": rss_before,
        "rss_mb_after": rss_after,
        "sigterm": shutdown,
        "machine": {"cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__},
        "commit": commit,
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
