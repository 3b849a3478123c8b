"""demo/app.py in a real browser: the app runs on a free loopback port with the shipped default model, and a
headless Chromium (Playwright driving the system's chromium) uploads a toy image, types a vocabulary and reads the
result; then a file that is not an image and an empty vocabulary get their messages and the app still answers.

Needs Chromium (``bash tools/install.sh`` installs Debian's ``chromium``; elsewhere set ``$ZEGSEG_CHROMIUM`` to a
Chrome or Chromium binary). A missing browser fails the test: it never skips. The screenshot of the result is
saved under the test's tmp folder, and copied to ``$ZEGSEG_ARTIFACTS_DIR`` when that is set.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zegseg.data.toy import load_world, render_indexed_scene

ROOT = Path(__file__).resolve().parents[1]
SCENE = 58  # a toy validation scene (seed 0), not among the app's examples: 5 classes, 98.6% pixel accuracy
DISTRACTORS = ("water", "yellow star", "purple cross")  # typed too when absent from the scene
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str:
    path = os.environ.get("ZEGSEG_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not path:
        pytest.fail(
            "no Chromium found for the browser test: run `bash tools/install.sh` (Debian/Ubuntu: apt-get install "
            "chromium) or set $ZEGSEG_CHROMIUM to a Chrome/Chromium binary"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_process(tmp_path_factory):
    """``python demo/app.py --port <free>`` as a user starts it: (process, its output lines, port)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio"))}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "demo" / "app.py"), "--port", str(port)],
        cwd=tmp_path_factory.mktemp("cwd"),  # runs from anywhere: configs and weights are found from the script
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        yield proc, lines, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        reader.join(timeout=5)
    assert not any("Traceback" in line for line in lines), "".join(lines)[-3000:]


def wait_for_address(proc, lines, port) -> str:
    """The address the app prints once it serves."""
    pattern = re.compile(r"running at (http://\S+)")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        url = next((m.group(1) for m in map(pattern.search, list(lines)) if m), None)
        if url is not None:
            assert url == f"http://127.0.0.1:{port}/", url
            return url
        time.sleep(0.2)
    pytest.fail(f"the app did not start: {''.join(lines)[-3000:]}")


@pytest.fixture(scope="module")
def page(app_process):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `bash tools/install.sh`")
    with sync_playwright() as p:
        # the browser starts while the app is still starting
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(wait_for_address(*app_process))
        page.wait_for_selector("#run")
        yield page
        browser.close()


def upload(page, path: Path) -> None:
    clear = page.locator("#input-image button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator("#input-image input[type=file]").first.set_input_files(str(path))


STATUS = "#status [data-testid='markdown']"
IDLE = "#status [data-testid='status-tracker'].hide"  # Gradio's busy overlay (timer, progress) is hidden


def run(page, vocabulary: str) -> str:
    """Type the vocabulary, press Segment, wait for the answer; returns the status line."""
    page.wait_for_selector(IDLE, state="attached")
    before = page.inner_text(STATUS)
    page.fill("#vocabulary textarea", vocabulary)
    page.click("#run")
    page.wait_for_function(
        "([idle, status, before]) => document.querySelector(idle) && "
        "document.querySelector(status).innerText !== before",
        arg=[IDLE, STATUS, before],
    )
    return page.inner_text(STATUS).strip()


def legend_names(page):
    return [re.sub(r"\s+[\d.]+%$", "", t.strip()) for t in page.locator("#legend li").all_inner_texts()]


def test_app_in_browser(page, tmp_path):
    world = load_world()
    scene = render_indexed_scene(world, 0, "val", SCENE, 160)
    image_path = tmp_path / "toy_scene.png"
    Image.fromarray(scene.image).save(image_path)
    ids, counts = np.unique(scene.label[scene.label != 255], return_counts=True)
    present = [world.classes[i] for i in ids[np.argsort(-counts)]]  # largest first
    typed = present + [c for c in DISTRACTORS if c not in present]

    upload(page, image_path)
    status = run(page, "; ".join(typed))
    assert re.search(r"in \d+\.\d\d s", status) and "Segmented 160 × 160 px" in status, status
    assert page.locator("#result img").first.get_attribute("src")  # the result image is shown
    legend = legend_names(page)
    assert legend and set(legend) <= set(typed) | {"unknown"}, legend
    assert present[0] in legend, (present, legend)  # the largest region is found
    assert len(set(legend) & set(present)) >= min(2, len(present)), (present, legend)
    table = page.locator("#areas").inner_text()
    assert all(name in table for name in legend), table
    downloads = page.locator("#downloads").inner_text().replace("\n", "")
    assert "toy_scene_labels.png" in downloads and "toy_scene.json" in downloads, downloads
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("ZEGSEG_ARTIFACTS_DIR"):
        Path(os.environ["ZEGSEG_ARTIFACTS_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["ZEGSEG_ARTIFACTS_DIR"]) / "app.png")

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a picture")
    upload(page, broken)
    status = run(page, "sky; grass")
    assert "Cannot read the image broken.png: not an image file" in status, status
    assert page.locator("#legend li").count() == 0

    upload(page, image_path)
    status = run(page, " ; , ")
    assert "Vocabulary: the vocabulary is empty" in status, status

    status = run(page, "; ".join(reversed(typed)))  # still serving; a new vocabulary reuses the loaded model
    assert "Segmented" in status and "loading the model" not in status, status
    assert present[0] in legend_names(page)
