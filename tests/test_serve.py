"""anogan-serve: one LitServe server on a loopback port (module-scoped, stopped at the end) answering
real HTTP requests, good, bad and concurrent, with the scores of the Python API."""

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import anogan
from anogan.serve import main as serve_main

requests = pytest.importorskip("requests")
pytest.importorskip("litserve")

MAX_BYTES = 300_000
MAX_IMAGES = 4
MAX_PIXELS = 1_000_000


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(fitted_run):
    """The server over the tiny run's scorer file; its URL. Stopped (its whole process group) at
    the end of the module, and by ``timeout`` after 10 minutes whatever happens to this process."""
    port = _free_port()
    command = [
        "timeout",
        "600",
        sys.executable,
        "-m",
        "anogan.serve",
        f"ckpt={fitted_run.run_dir / 'scorer.pt'}",
        f"port={port}",
        "host=127.0.0.1",
        "device=cpu",
        f"max_bytes={MAX_BYTES}",
        f"max_images={MAX_IMAGES}",
        f"max_pixels={MAX_PIXELS}",
        "max_batch_size=8",
        "batch_timeout=0.05",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server stopped: {proc.stdout.read()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).text == "ok":
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not become healthy in 240 s")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def pngs(fitted_run):
    """Six PNG files (bytes) of different sizes and the API's predictions for them (with maps)."""
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (32 + 4 * i, 32 + 2 * i, 3), dtype=np.uint8) for i in range(6)]
    blobs = []
    from PIL import Image

    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    expected = anogan.load(fitted_run.run_dir, device="cpu").predict(arrays, maps=True)
    return blobs, expected


def _check(answer: dict, expected, indices):
    assert len(answer["predictions"]) == len(indices)
    for got, k in zip(answer["predictions"], indices):
        want = expected.rows[k]
        for key in ("score", "raw_score", "residual", "discrimination", "complexity", "p_value"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key
        assert got["label"] == want["label"] and got["steps"] == want["steps"] and got["notes"] == want["notes"]


def test_good_requests_get_the_apis_scores(server, pngs):
    blobs, expected = pngs
    files = [("file", (f"{k}.png", blobs[k], "image/png")) for k in range(4)]
    answer = requests.post(f"{server}/predict", files=files, timeout=120)
    assert answer.status_code == 200, answer.text
    _check(answer.json(), expected, range(4))
    body = {"images": [base64.b64encode(b).decode() for b in blobs[4:]], "maps": True}
    answer = requests.post(f"{server}/predict", json=body, timeout=120).json()
    _check(answer, expected, [4, 5])
    for got, k in zip(answer["predictions"], [4, 5]):  # the map at the image's own size
        assert np.allclose(np.array(got["map"]), expected.maps[k], rtol=1e-5, atol=1e-7)
    assert answer["rule"] == expected.rule
    shared = [w for w in expected.warnings if not w.startswith("input[")]  # the calibration's, if any
    resized = [f"images[{i}]: {expected.rows[k]['notes']}" for i, k in enumerate([4, 5])]  # this request's images only
    assert answer["warnings"] == resized + shared
    if expected.threshold == float("inf"):
        assert answer["threshold"] is None and "infinite" in answer["warnings"][-1]
    else:
        assert answer["threshold"] == pytest.approx(expected.threshold)
    info = requests.get(f"{server}/info", timeout=10).json()["model"]
    assert info["image_size"] == 32 and info["scorer"] == "LatentMapping"


def test_a_warned_file_carries_its_warning(server, fitted_run):
    from PIL import Image

    rgba = np.dstack([np.full((32, 32, 3), 120, np.uint8), np.full((32, 32), 255, np.uint8)])
    rgba[:, 16:, 3] = 0
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    answer = requests.post(f"{server}/predict", files=[("file", ("clear.png", buf.getvalue(), "image/png"))], timeout=120)
    assert answer.status_code == 200, answer.text
    note = "transparency flattened on black (50% of pixels not opaque)"
    (row,) = answer.json()["predictions"]
    assert row["notes"] == note and answer.json()["warnings"][0] == f"clear.png: {note}"
    flat = rgba[..., :3].copy()
    flat[:, 16:] = 0
    want = anogan.load(fitted_run.run_dir, device="cpu").predict(flat).rows[0]["score"]
    assert row["score"] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, status, reason",
    [
        ({"files": [("image", ("a.png", b"x"))]}, 400, "unknown form field(s) image"),
        ({"files": [("file", ("a.txt", b"hello"))]}, 400, "a.txt: not an image"),
        ({"data": {"file": "text"}}, 415, "content type 'application/x-www-form-urlencoded'"),
        ({"json": {"imgs": []}}, 400, 'no "images" field'),
        ({"json": {"images": ["@@@"]}}, 400, "images[0] is not base64"),
        ({"json": {"images": [base64.b64encode(b"GIF89a broken").decode()]}}, 400, "images[0]: "),
        ({"json": {"images": ["AA=="] * (MAX_IMAGES + 1)}}, 400, "at most 4 (max_images)"),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        ({"data": b"x" * (MAX_BYTES + 1), "headers": {"Content-Type": "application/json"}}, 413, "max_bytes"),
        ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "content type 'text/plain'"),
        (
            {"files": [("file", ("big.png", _png(np.zeros((1001, 1000), np.uint8))))]},
            413,
            "big.png: more than max_pixels=1000000",
        ),
    ],
)
def test_bad_requests_get_a_4xx_with_one_line(server, kwargs, status, reason):
    answer = requests.post(f"{server}/predict", timeout=60, **kwargs)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert reason in detail and "\n" not in detail


def test_concurrent_good_and_bad_requests(server, pngs):
    """32 requests from 8 threads at once, one in four not an image: the good ones (batched with
    the bad ones) get the API's scores, the bad ones 400; the server is healthy afterwards."""
    blobs, expected = pngs

    def send(i: int):
        if i % 4 == 3:
            return i, requests.post(f"{server}/predict", files=[("file", ("bad.bin", b"\x00" * 64))], timeout=120)
        k = i % 6
        return i, requests.post(f"{server}/predict", files=[("file", (f"{k}.png", blobs[k]))], timeout=120)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(32)))
    for i, answer in answers:
        if i % 4 == 3:
            assert answer.status_code == 400 and "bad.bin: not an image" in answer.json()["detail"]
        else:
            assert answer.status_code == 200, answer.text
            _check(answer.json(), expected, [i % 6])
    assert requests.get(f"{server}/health", timeout=10).text == "ok"


def test_serve_command_line_errors_are_one_line(fitted_run, tmp_path, caplog):
    cases = [
        ([f"ckpt={tmp_path}"], "holds no scorer.pt"),
        (["ckpt=x", "port=abc"], "port takes a whole number"),
        (["port=1"], "ckpt=... is required"),
        ([f"ckpt={fitted_run.run_dir}", "max_images=0"], "max_images=0"),
        ([f"ckpt={fitted_run.run_dir}", "threshold=best"], "threshold='best'"),
    ]
    if not torch.cuda.is_available():
        cases.append(([f"ckpt={fitted_run.run_dir}", "device=cuda"], "device=cuda"))
    for argv, message in cases:
        caplog.clear()
        assert serve_main(argv) == 2, argv
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], (argv, errors)
