"""In a real browser (the system's headless Chromium, driven by Playwright): anogan-serve's page scores
an image picked through its own file control with /predict's numbers and draws its map, a bad file
shows the API's one-line reason; every page of the built documentation site renders without a
console error. Skipped where /usr/bin/chromium is missing (`.ci/run` installs it)."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from screenshots import CHROMIUM, chromium, score_on_page, serving

requests = pytest.importorskip("requests")
pytest.importorskip("playwright")
pytest.importorskip("litserve")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file() and os.environ.get("ANOGAN_BROWSER_TESTS") != "required",  # .ci/run requires them
        reason=f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (.ci/run does)",
    ),
]


def _errors(page) -> list[str]:
    """Console errors and uncaught exceptions of ``page`` from now on (a list that fills up)."""
    found: list[str] = []
    page.on("console", lambda m: found.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: found.append(f"exception: {e}"))
    return found


def test_the_page_shows_predicts_score_and_draws_the_map(fitted_run, tmp_path):
    from PIL import Image

    image = tmp_path / "car.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(image)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    with serving(fitted_run.run_dir, "device=cpu") as url, chromium() as browser:
        page = browser.new_page()
        errors = _errors(page)
        score_on_page(page, url, [image])
        card = page.locator(".card").first
        shown = card.locator(".score").inner_text()
        exact = float(card.get_attribute("data-score"))
        with open(image, "rb") as f:
            want = requests.post(f"{url}/predict", files=[("file", ("car.png", f))], timeout=120).json()["predictions"][0]
        # the page's number is /predict's (to float32 noise between batches, as tests/test_serve.py allows)
        assert exact == pytest.approx(want["score"], rel=1e-6) and shown == f"{want['score']:.4f}"
        assert card.locator(".p-value").inner_text() == f"{want['p_value']:.4f}"
        assert card.locator(".label").inner_text() == ("anomalous" if want["label"] == 1 else "normal")
        for kind in ("input", "map", "generated"):  # drawn: decoded at the model's 32 px
            size = card.locator(f"img.{kind}").evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
            assert size == [True, 32, 32], kind
        assert page.locator("#facts-list").inner_text().count("CIFAR-10 class automobile") == 1
        assert errors == [], errors

        score_on_page(page, url, [bad])
        with open(bad, "rb") as f:
            reason = requests.post(f"{url}/predict", files=[("file", ("notes.png", f))], timeout=60).json()["detail"]
        assert (
            page.locator(".card.failed .error").inner_text()
            == reason
            == "notes.png: not an image (Pillow cannot identify the file)"
        )
        # the browser reports the refused request itself; nothing else went wrong
        assert [e for e in errors if "status of 400" not in e] == [], errors


def test_every_documentation_page_renders_without_a_console_error(tmp_path):
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if p.name != "404.html")
    assert "index.html" in pages and "deploy/index.html" in pages and len(pages) > 20
    handler = functools.partial(_QuietHandler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        problems = {}
        with chromium() as browser:
            for name in pages:
                page = browser.new_page()
                errors = _errors(page)
                answer = page.goto(f"{url}/{name}", wait_until="load")
                page.wait_for_timeout(100)  # scripts that run on load (search, code copy buttons)
                title = page.title()
                if answer is None or answer.status != 200 or not title or errors:
                    problems[name] = (answer.status if answer else None, title, errors)
                page.close()
        httpd.shutdown()
    assert problems == {}, problems


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
