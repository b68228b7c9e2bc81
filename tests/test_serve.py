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
from pathlib import Path

import numpy as np
import pytest
import torch

import anogan
from anogan.deploy.serve import main as serve_main

requests = pytest.importorskip("requests")
pytest.importorskip("litserve")

MAX_BYTES = 300_000
MAX_IMAGES = 4
MAX_PIXELS = 37_000_000  # a 6000×6000 image fits; 6100×6100 does not
MAX_REQUEST_PIXELS = 40_000_000  # one 6000×6000 image fits, two do not
MAX_RESPONSE_BYTES = 1_000_000
BODY_TIMEOUT = 2


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(scorer, port: int, *settings: str) -> subprocess.Popen:
    """``anogan-serve`` on 127.0.0.1:``port`` in a session of its own, under ``timeout`` (10 min)."""
    command = ["timeout", "600", sys.executable, "-m", "anogan.deploy.serve", f"ckpt={scorer}", f"port={port}"]
    command += ["host=127.0.0.1", "device=cpu", *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)


def _wait_healthy(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server stopped: {proc.stdout.read()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).text == "ok":
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("the server did not become healthy in 240 s")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    """The whole process group, whatever state it is in (a test's own cleanup)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def scorer_copy(fitted_run, tmp_path_factory):
    """A copy of the tiny run's scorer file that the module's server serves (a test changes it)."""
    path = tmp_path_factory.mktemp("served") / "scorer.pt"
    path.write_bytes((fitted_run.run_dir / "scorer.pt").read_bytes())
    return path


@pytest.fixture(scope="module")
def server(scorer_copy):
    """The server over the tiny run's scorer file; its URL. Stopped (its whole process group) at
    the end of the module, and by ``timeout`` after 10 minutes whatever happens to this process."""
    port = _free_port()
    settings = [f"max_bytes={MAX_BYTES}", f"max_images={MAX_IMAGES}", f"max_pixels={MAX_PIXELS}"]
    settings += [f"max_request_pixels={MAX_REQUEST_PIXELS}", f"max_response_bytes={MAX_RESPONSE_BYTES}"]
    settings += [f"body_timeout={BODY_TIMEOUT}", "max_batch_size=8", "batch_timeout=0.05"]
    proc = _start(scorer_copy, port, *settings)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url)
        yield url
    finally:
        _stop(proc)


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
    body = {"images": [base64.b64encode(b).decode() for b in blobs[4:]], "maps": "full"}
    answer = requests.post(f"{server}/predict", json=body, timeout=120).json()
    _check(answer, expected, [4, 5])
    for got, k in zip(answer["predictions"], [4, 5]):  # maps=full: the map at the image's own size
        assert np.allclose(np.array(got["map"]), expected.maps[k], rtol=1e-5, atol=1e-7)
    body["maps"] = True  # the default map: the model's resolution, 32×32
    answer = requests.post(f"{server}/predict", json=body, timeout=120).json()
    _check(answer, expected, [4, 5])
    assert all(np.array(got["map"]).shape == (32, 32) for got in answer["predictions"])
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


def _decode_png(text: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text))) as img:
        assert img.format == "PNG"
        return np.array(img)


def _decode_png_bytes(blob: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        return np.array(img)


def test_maps_png_gives_the_pictures_of_the_apis_prediction(server, pngs, fitted_run):
    """maps=png (the page's option): the same scores, plus the model's input, the map over it and
    G(z) as PNGs at the model's resolution, equal to what the Python API computes."""
    from anogan.deploy.page import map_over_input

    blobs, expected = pngs
    detector = anogan.load(fitted_run.run_dir, device="cpu")
    full = detector.predict([np.array(_decode_png_bytes(b)) for b in blobs[:2]], maps=True, reconstructions=True)
    files = [("file", (f"{k}.png", blobs[k], "image/png")) for k in range(2)]
    answer = requests.post(f"{server}/predict", files=files, data={"maps": "png"}, timeout=120)
    assert answer.status_code == 200, answer.text
    _check(answer.json(), expected, [0, 1])
    for k, got in enumerate(answer.json()["predictions"]):
        assert "map" not in got
        model_input = _decode_png(got["input"])
        assert np.array_equal(model_input, full.inputs[k].permute(1, 2, 0).numpy())  # what the model saw, exactly
        assert np.array_equal(_decode_png(got["map_png"]), map_over_input(full.model_maps[k], full.inputs[k]))
        assert got["map_range"] == pytest.approx([float(full.model_maps[k].min()), float(full.model_maps[k].max())], rel=1e-5)
        generated = _decode_png(got["generated"]).astype(int)
        want = ((full.reconstructions[k].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(int)
        assert generated.shape == (32, 32, 3) and np.abs(generated - want).max() <= 1  # G(z) of the same z
    bad = requests.post(f"{server}/predict", files=files[:1], data={"maps": "jpeg"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["detail"] == (
        "maps='jpeg': use true (the model's resolution), false, full (the image's own size) or png"
    )


def test_the_page_and_the_run_facts_are_served(server, scorer_copy, fitted_run):
    from anogan.deploy.page import run_facts

    page = requests.get(f"{server}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="files"' in page.text and "/static/page.js" in page.text
    script = requests.get(f"{server}/static/page.js", timeout=10)
    assert script.status_code == 200 and 'append("maps", "png")' in script.text
    assert "http" not in script.text.replace("HTTP ", "")  # nothing from outside the server
    served = requests.get(f"{server}/info", timeout=10).json()["model"]["run"]
    assert served == run_facts(scorer_copy)  # the module's server serves a copy outside the run folder
    run = run_facts(fitted_run.run_dir / "scorer.pt")  # the facts of a scorer file in its run folder
    metrics = fitted_run.metrics
    assert run["normal_data"] == "CIFAR-10 class automobile (CIFAR10AnomalyDataModule)"
    assert run["val_auroc"] == metrics["val"]["auroc"] and run["val_auroc_ci"] == metrics["val"]["auroc_ci"]
    assert run["gan_source"] == "trained" and run["run_folder"] == str(fitted_run.run_dir)


def test_run_facts_of_a_scorer_copied_alone(fitted_run, tmp_path):
    import shutil

    from anogan.deploy.page import run_facts

    shutil.copy(fitted_run.run_dir / "scorer.pt", tmp_path / "scorer.pt")
    facts = run_facts(tmp_path / "scorer.pt")
    assert facts["run_folder"] is None and facts["val_auroc"] is None and facts["normal_data"] is None


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
            {"files": [("file", ("big.png", _png(np.zeros((6100, 6100), np.uint8))))]},
            413,
            "big.png: more than max_pixels=37000000",
        ),
        (
            {"files": [("file", (f"{k}.png", _png(np.zeros((6000, 6000), np.uint8)))) for k in range(2)]},
            413,
            "more than max_request_pixels=40000000",
        ),
        (
            {"files": [("file", ("a.png", _png(np.zeros((6000, 6000), np.uint8)))), ("maps", (None, "full"))]},
            413,
            "more than max_response_bytes=1000000",
        ),
        ({"json": {"images": ["AA=="], "maps": "big"}}, 400, '"maps" must be true'),
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
        ([f"ckpt={fitted_run.run_dir}", "workers=0"], "workers=0"),
        ([f"ckpt={fitted_run.run_dir}", "drain_timeout=0"], "drain_timeout=0"),
        ([f"ckpt={fitted_run.run_dir}", "batch_timeout=5", "timeout=1"], "use batch_timeout < timeout"),
        ([f"ckpt={fitted_run.run_dir}", "batch_timeout=nan"], "batch_timeout=nan: use a number of seconds >= 0"),
        ([f"ckpt={fitted_run.run_dir}", "batch_timeout=-1"], "batch_timeout=-1.0: use a number of seconds >= 0"),
        ([f"ckpt={fitted_run.run_dir}", "timeout=nan"], "timeout=nan: use a number of seconds > 0"),
        ([f"ckpt={fitted_run.run_dir}", "timeout=inf"], "timeout=inf: use a number of seconds > 0"),
        ([f"ckpt={fitted_run.run_dir}", "timeout=0"], "timeout=0.0: use a number of seconds > 0"),
        ([f"ckpt={fitted_run.run_dir}", "port=70000"], "port=70000: use a whole number from 1 to 65535"),
        ([f"ckpt={fitted_run.run_dir}", "port=0"], "port=0: use a whole number from 1 to 65535"),
        ([f"ckpt={fitted_run.run_dir}", "threshold=nan"], "threshold='nan': use fpr, f1, youden or a finite number"),
        ([f"ckpt={fitted_run.run_dir}", "threshold=inf"], "threshold='inf': use fpr, f1, youden or a finite number"),
    ]
    if not torch.cuda.is_available():
        cases.append(([f"ckpt={fitted_run.run_dir}", "device=cuda"], "device=cuda"))
    for argv, message in cases:
        caplog.clear()
        assert serve_main(argv) == 2, argv
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], (argv, errors)


def test_serve_reads_a_threshold_as_predict_and_the_api_do(fitted_run):
    """`` FPR `` (any case, spaces around) is the fpr rule; a number string is a float."""
    from anogan.config.arguments import ServeConfig, parse_key_values
    from anogan.deploy.serve import USAGE
    from anogan.deploy.server import build_server
    from anogan.utils.errors import ServeError

    for given, expected in (("' FPR '", "fpr"), ("0.25", 0.25)):
        cfg = parse_key_values([f"ckpt={fitted_run.run_dir}", f"threshold={given}", "device=cpu"], ServeConfig, USAGE, ServeError)
        server = build_server(cfg)
        assert server.lit_api.threshold == expected and server.model_metadata["rule"] == expected


def test_a_6000_square_black_image_with_maps_is_bounded(server, fitted_run):
    """A 6000×6000 all-black PNG (small file) with maps: a map at the model's resolution, a small
    answer, and the complexity floor's score: 255 × the raw score, not ~1e9."""
    blob = _png(np.zeros((6000, 6000, 3), np.uint8))
    answer = requests.post(f"{server}/predict", files=[("file", ("black.png", blob)), ("maps", (None, "true"))], timeout=300)
    assert answer.status_code == 200, answer.text
    assert len(answer.content) < MAX_RESPONSE_BYTES
    row = answer.json()["predictions"][0]
    assert np.array(row["map"]).shape == (32, 32) and row["complexity"] == 0
    assert row["score"] == pytest.approx(255 * row["raw_score"], rel=1e-9)
    expected = anogan.load(fitted_run.run_dir, device="cpu").predict(np.zeros((6000, 6000, 3), np.uint8))
    assert row["score"] == pytest.approx(expected[0]["score"], rel=1e-6)


def test_a_body_sent_too_slowly_is_cut_with_a_408(server):
    """Headers promising 1000 bytes, then 10 bytes and silence: 408 after body_timeout seconds."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        conn.sendall(head.encode() + b'{"images":')
        start = time.monotonic()
        chunks = [conn.recv(4096)]
        waited = time.monotonic() - start
        while chunks[-1]:  # the server closes the connection after its answer
            chunks.append(conn.recv(4096))
        answer = b"".join(chunks).decode()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert "body_timeout" in answer and BODY_TIMEOUT - 0.5 <= waited < BODY_TIMEOUT + 10


def test_info_names_the_served_file_and_health_notices_a_change(server, scorer_copy, pngs):
    """/info's sha256 is the file's, whose scores the server gives; a replaced file on disk makes
    /health warn (the served model is unchanged), and the original file clears the warning."""
    import hashlib

    original = scorer_copy.read_bytes()
    info = requests.get(f"{server}/info", timeout=10).json()["model"]
    assert info["sha256"] == hashlib.sha256(original).hexdigest() and info["size_bytes"] == len(original)
    assert info["loaded_at"].endswith("+00:00")
    blobs, expected = pngs
    _check(requests.post(f"{server}/predict", files=[("file", ("0.png", blobs[0]))], timeout=120).json(), expected, [0])
    try:
        scorer_copy.write_bytes(original + b"changed")
        health = requests.get(f"{server}/health", timeout=10)
        assert health.status_code == 200 and health.text.startswith("ok; warning: ")
        assert "changed on disk" in health.text and info["sha256"][:12] in health.text and "\n" not in health.text
        _check(requests.post(f"{server}/predict", files=[("file", ("0.png", blobs[0]))], timeout=120).json(), expected, [0])
    finally:
        scorer_copy.write_bytes(original)
    assert requests.get(f"{server}/health", timeout=10).text == "ok"


def _processes_of_group(pgid: int) -> list[str]:
    """The live (not zombie) processes whose process group is ``pgid``."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(entry)
    return alive


@pytest.mark.slow
@pytest.mark.parametrize(
    "target, batch_timeout, drain_timeout, status",
    [("main", 1.5, 20, 200), ("group", 1.5, 20, 200), ("group", 8, 1, 503)],
    ids=["kill-main-drains", "kill-group-drains", "drain-timeout-503"],
)
def test_sigterm_drains_in_flight_requests_and_leaves_nothing(fitted_run, pngs, target, batch_timeout, drain_timeout, status):
    """SIGTERM with requests in flight (each waits ``batch_timeout`` in LitServe's batch): they are
    answered (200 within the drain time, else a JSON 503), the main process exits 0 with one
    line, no process of the server remains and the port is free."""
    port = _free_port()
    proc = _start(fitted_run.run_dir / "scorer.pt", port, f"batch_timeout={batch_timeout}", f"drain_timeout={drain_timeout}")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url)
        blobs, expected = pngs
        with ThreadPoolExecutor(4) as pool:
            sent = [
                pool.submit(requests.post, f"{url}/predict", files=[("file", ("0.png", blobs[0]))], timeout=120) for _ in range(4)
            ]
            time.sleep(0.5)
            if target == "main":  # the Python main process, child of `timeout` (which would signal the group)
                main_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
                os.kill(main_pid, signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
            answers = [f.result() for f in sent]
        output, _ = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    for answer in answers:
        assert answer.status_code == status, answer.text
        if status == 200:
            _check(answer.json(), expected, [0])
        else:
            assert "shutting down" in answer.json()["detail"]
    assert proc.returncode == 0, output
    stopped = [line for line in output.splitlines() if "anogan-serve stopped on SIGTERM" in line]
    assert len(stopped) == 1 and "Traceback" not in output, output
    deadline = time.monotonic() + 10
    while _processes_of_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_of_group(proc.pid) == []
    with socket.socket() as s:  # the port is free for a restart (SO_REUSEADDR as uvicorn: TIME_WAIT allowed, a listener not)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
