"""The documentation's pictures of what a person sees, made in a real browser (the system's headless
Chromium, driven by Playwright; nothing is downloaded):

    python benchmarks/screenshots.py page --ckpt <run folder> --images a.png b.png --out docs/figures/serve_page.png
    python benchmarks/screenshots.py sweep --sweep-dir <sweep folder> --out docs/figures/sweep_heatmap.png

``page`` starts ``anogan-serve`` on a free loopback port, opens its page, picks the images through the
page's own file control, waits for their answers and saves a screenshot of the page. ``sweep``
rebuilds the sweep folder's summary (``anogan.reporting.sweep.summarize``) and copies its ``summary.png``.
The helpers (``chromium``, ``serving``, ``score_on_page``) are also used by tests/test_browser.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium package
# No first-run dialogs, no background connections (the machine may have no internet), no GPU.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright browser on the system's Chromium, in a new empty profile; closed at the end."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=FLAGS, headless=True, viewport={"width": 1280, "height": 760}
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def serving(ckpt: str | Path, *settings: str, limit_s: float = 240) -> Iterator[str]:
    """``anogan-serve ckpt=<ckpt>`` on a free loopback port until the block ends: its URL once
    ``/health`` says ok. The server's whole process group is stopped at the end (and by
    ``timeout`` after 10 minutes, whatever happens to this process)."""
    port = free_port()
    # quoted: a sweep's job folder holds commas (alpha=0.1,latent_dim=128), which key=value reads as a list
    command = ["timeout", "600", sys.executable, "-m", "anogan.deploy.serve", f"ckpt='{ckpt}'", f"port={port}", "host=127.0.0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*command, *settings], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + limit_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"anogan-serve stopped: {proc.stdout.read()[-3000:] if proc.stdout else ''}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.read() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"anogan-serve did not become healthy in {limit_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def score_on_page(page: Any, url: str, images: list[Path], timeout_s: float = 120) -> None:
    """Open the server's page, wait for the run's facts, pick ``images`` through the page's file
    control and wait until every one is answered (scored or refused)."""
    page.goto(f"{url}/")
    page.wait_for_selector("#facts-list dt:text('normal data')", timeout=timeout_s * 1000)
    done = int(page.get_attribute("#status", "data-done") or 0)
    page.set_input_files("#files", [str(p) for p in images])
    page.wait_for_selector(f"#status[data-done='{done + len(images)}']", timeout=timeout_s * 1000)


def page_screenshot(ckpt: Path, images: list[Path], out: Path) -> None:
    with serving(ckpt, "device=cpu") as url, chromium() as browser:
        page = browser.new_page()
        score_on_page(page, url, images)
        shot = page.screenshot(full_page=True)
    small_png(shot, out)


def small_png(png: bytes, out: Path) -> None:
    """``png`` saved to ``out`` with a palette of 256 colours (a few times smaller, for the docs)."""
    import io

    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").quantize(colors=256).save(out, optimize=True)


def sweep_figure(sweep_dir: Path, out: Path) -> None:
    from anogan.reporting.sweep import summarize

    summarize(sweep_dir)
    if not (sweep_dir / "summary.png").is_file():
        raise SystemExit(f"{sweep_dir}: no summary.png (the sweep needs one or two swept keys and a finished job)")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep_dir / "summary.png", out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    page = sub.add_parser("page", help="a screenshot of anogan-serve's page with scored images")
    page.add_argument("--ckpt", type=Path, required=True, help="a run folder or its scorer.pt")
    page.add_argument("--images", type=Path, nargs="+", required=True)
    page.add_argument("--out", type=Path, default=Path("docs/figures/serve_page.png"))
    sweep = sub.add_parser("sweep", help="the heatmap of a sweep folder")
    sweep.add_argument("--sweep-dir", type=Path, required=True)
    sweep.add_argument("--out", type=Path, default=Path("docs/figures/sweep_heatmap.png"))
    args = parser.parse_args(argv)
    if args.what == "page":
        if not Path(CHROMIUM).is_file():
            raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
        page_screenshot(args.ckpt, args.images, args.out)
    else:
        sweep_figure(args.sweep_dir, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
