"""``mnistlab serve``: the JSON endpoint under bad requests, Ctrl-C, and the page in a real browser.

The browser test drives Debian's headless ``chromium`` through Selenium and ``chromium-driver``
(``apt-get install chromium chromium-driver``; ``.ci/run`` installs them). It draws MNIST test
digits on the canvas with the mouse, stroke by stroke: each digit's ink is thinned to a one-pixel
skeleton and the skeleton walked into pen strokes, so the expected label is known.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "starlette", reason='mnistlab serve needs its extra: pip install "mnistlab[serve]"'
)
pytest.importorskip(
    "uvicorn", reason='mnistlab serve needs its extra: pip install "mnistlab[serve]"'
)
httpx = pytest.importorskip("httpx", reason="the tests talk to the server with httpx")

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "serve.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


# -- a small model and a running server ------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A seed-mlp trained for 800 steps on the bundled sample (~93% test accuracy; seconds)."""
    import mnistlab

    folder = tmp_path_factory.mktemp("serve") / "run"
    mnistlab.train("seed-mlp", steps=800, dataset="mnist-sample", device="cpu", run_dir=folder)
    return folder


class Server:
    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mnistlab", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if "open http://" in line:
                self.url = line.split("open ")[1].split()[0].rstrip("/")
                return
        self.proc.kill()
        raise AssertionError(f"the server did not start: {self.lines} {self.proc.stderr.read()}")

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, "".join(self.lines) + out, err


@pytest.fixture(scope="module")
def softmax_dir(tmp_path_factory) -> Path:
    """A second model to compare with: seed-softmax, 300 steps on the sample (~90%; a second)."""
    import mnistlab

    folder = tmp_path_factory.mktemp("serve-softmax") / "softmax"
    mnistlab.train("seed-softmax", steps=300, dataset="mnist-sample", device="cpu", run_dir=folder)
    return folder


@pytest.fixture(scope="module")
def server(run_dir, softmax_dir):
    """``mnistlab serve MLP SOFTMAX``: the page compares the two."""
    s = Server(str(run_dir), str(softmax_dir), "--port", "0")
    yield s
    if s.proc.poll() is None:
        s.stop()


def _png(size: tuple[int, int] = (60, 60), digit: bool = True) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("L", size, 255)
    if digit:
        ImageDraw.Draw(img).line([(30, 10), (30, 50)], fill=0, width=6)  # a "1"
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _claiming(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its header rewritten to claim ``width`` x ``height`` pixels (a bomb's trick)."""
    ihdr = bytearray(png[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return png[:12] + bytes(ihdr) + crc + png[33:]


# -- the JSON endpoint -----------------------------------------------------------------------------
def test_predict_endpoint_answers_png_and_json(server, sample_splits):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        info = client.get("/api/info").json()
        assert info["preset"] == "seed-mlp" and info["dataset"] == "mnist-sample"
        assert info["steps"] == 800 and info["test_accuracy"] > 0.85
        assert info["class_names"] == [str(i) for i in range(10)]
        assert [m["preset"] for m in info["models"]] == ["seed-mlp", "seed-softmax"]
        assert [m["name"] for m in info["models"]] == ["run", "softmax"]
        icon = client.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"

        r = client.post("/api/predict", content=_png(), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == 1 and body["class"] == "1"
        assert abs(sum(body["probabilities"]) - 1.0) < 1e-4
        assert np.asarray(body["image"]).shape == (28, 28)

        images = sample_splits.test.images[:20].reshape(-1, 28, 28).numpy()
        labels = sample_splits.test.labels[:20].tolist()
        right = 0
        for image, label in zip(images, labels, strict=True):
            r = client.post("/api/predict", json={"image": image.tolist()})
            assert r.status_code == 200, r.text
            right += r.json()["label"] == label
        assert right >= 17

        page = client.get("/")
        assert page.status_code == 200 and "<canvas" in page.text
        assert "http" not in page.text.replace("http://", "").split("<body")[0]  # no CDN
        assert client.get("/static/serve.js").status_code == 200


BAD_REQUESTS = [
    ("empty body", b"", "image/png", 400, "empty"),
    ("not an image", b"hello, this is text" * 10, "image/png", 400, "not an image"),
    ("truncated PNG", _png()[:60], "image/png", 400, "damaged"),
    ("huge dimensions", _claiming(_png(), 30_000, 30_000), "image/png", 413, "too large"),
    ("wrong content type", _png(), "text/plain", 415, "content type"),
    ("no content type", _png(), "", 415, "content type"),
    ("10 MB body", b"\x89PNG" + bytes(10 * 1024 * 1024), "image/png", 413, "too large"),
    ("blank image", _png(digit=False), "image/png", 422, "no digit"),
    ("bad JSON", b"{not json", "application/json", 400, "JSON"),
    ("JSON of the wrong shape", b'{"image": [[1, 2], [3, 4]]}', "application/json", 400, "28x28"),
    ("JSON of strings", b'{"image": "abc"}', "application/json", 400, "28x28"),
]


def test_bad_requests_get_a_4xx_and_the_server_keeps_answering(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, body, kind, status, words in BAD_REQUESTS:
            headers = {"content-type": kind} if kind else {}
            r = client.post("/api/predict", content=body, headers=headers)
            assert r.status_code == status, f"{name}: {r.status_code} {r.text[:200]}"
            assert words.lower() in r.json()["error"].lower(), f"{name}: {r.json()}"
            assert client.get("/api/info").status_code == 200, f"the server died after {name}"

        # A body sent in chunks (no Content-Length) is counted as it arrives.
        def chunks():
            for _ in range(12):
                yield bytes(1024 * 1024)

        r = client.post("/api/predict", content=chunks(), headers={"content-type": "image/png"})
        assert r.status_code == 413 and "too large" in r.json()["error"]

        r = client.get("/api/predict")
        assert r.status_code == 405 and "POST" in r.json()["error"]
        assert client.get("/nowhere").status_code == 404

        r = client.post("/api/predict", content=_png(), headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.json()["label"] == 1
    assert server.proc.poll() is None


def test_ctrl_c_stops_cleanly_and_open_host_warns(run_dir):
    s = Server(str(run_dir), "--port", "0", "--host", "0.0.0.0")
    assert httpx.get(s.url + "/api/info", timeout=10).status_code == 200
    code, out, err = s.stop()
    assert code == 0, err
    assert "server stopped" in out
    assert "Traceback" not in err
    assert "warning" in err and "0.0.0.0" in err


def test_taken_port_and_missing_extra_are_one_line(run_dir, server, monkeypatch, capsys):
    from mnistlab.apps.cli import main

    port = server.url.rsplit(":", 1)[1]
    assert main(["serve", str(run_dir), "--port", port]) != 0
    assert "--port" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", str(run_dir)]) != 0
    assert 'pip install "mnistlab[serve]"' in capsys.readouterr().err


def test_fashion_models_show_their_class_names():
    import asyncio

    from mnistlab.api import Model
    from mnistlab.apps.serve import create_app
    from mnistlab.config import resolve, set_value
    from mnistlab.models import build_model

    config = set_value(resolve("seed-softmax"), "data.dataset", "fashion-mnist")
    info = {"preset": "seed-softmax", "dataset": "fashion-mnist", "steps": 0, "num_classes": 10}
    model = Model(build_model(config.model, num_classes=10, seed=1), config, info)

    async def ask() -> tuple[list[str], dict]:
        transport = httpx.ASGITransport(app=create_app(model))
        async with httpx.AsyncClient(transport=transport, base_url="http://page") as client:
            names = (await client.get("/api/info")).json()["class_names"]
            headers = {"content-type": "image/png"}
            reply = await client.post("/api/predict", content=_png(), headers=headers)
            return names, reply.json()

    names, reply = asyncio.run(ask())
    assert names[0] == "T-shirt/top" and len(names) == 10
    assert reply["class"] in names and reply["classes"] == names


# -- strokes from MNIST digits ---------------------------------------------------------------------
def thin(ink: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: the one-pixel-wide skeleton of a boolean image."""
    img = np.pad(ink.astype(np.uint8), 1)
    changed = True
    while changed:
        changed = False
        for phase in (0, 1):
            p = [np.roll(np.roll(img, -dy, 0), -dx, 1) for dy, dx in _RING]
            n = sum(p)
            transitions = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)) for i in range(8))
            p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
            if phase == 0:
                c = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                c = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (img == 1) & (n >= 2) & (n <= 6) & (transitions == 1) & c
            if remove.any():
                img[remove] = 0
                changed = True
    return img[1:-1, 1:-1].astype(bool)


# Neighbours clockwise from north (P2..P9 in Zhang and Suen's paper), as (dy, dx).
_RING = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]


def strokes(digit: np.ndarray, threshold: float = 0.4) -> list[list[tuple[int, int]]]:
    """Pen strokes ((x, y) pixel paths) along the skeleton of a 28x28 digit: start at the ends,
    follow unvisited neighbours (straight ones first), begin a new stroke at a branch."""
    skeleton = thin(digit > threshold)
    todo = {(int(y), int(x)) for y, x in zip(*np.nonzero(skeleton), strict=True)}
    visited: set[tuple[int, int]] = set()
    order = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]

    def neighbours(p: tuple[int, int]) -> list[tuple[int, int]]:
        return [(p[0] + dy, p[1] + dx) for dy, dx in order if (p[0] + dy, p[1] + dx) in todo]

    paths = []
    while todo - visited:
        left = todo - visited
        ends = [p for p in left if len(neighbours(p)) == 1]
        start = min(ends or left)
        path = [start]
        joined = [q for q in neighbours(start) if q in visited]
        if joined:  # a branch: start where it leaves the stroke already drawn
            path.insert(0, joined[0])
        visited.add(start)
        current = start
        while True:
            nxt = [q for q in neighbours(current) if q not in visited]
            if not nxt:
                break
            current = nxt[0]
            visited.add(current)
            path.append(current)
        paths.append([(x, y) for y, x in path])
    return paths


def test_strokes_cover_the_digit(sample_splits):
    digit = sample_splits.test.images[0].reshape(28, 28).numpy()
    paths = strokes(digit)
    assert paths and sum(len(p) for p in paths) >= 10
    skeleton = thin(digit > 0.4)
    assert skeleton.sum() < (digit > 0.4).sum() / 2  # thinner than the ink
    covered = {p for path in paths for p in path}
    assert covered == {(int(x), int(y)) for y, x in zip(*np.nonzero(skeleton), strict=True)}


# -- the page in headless Chromium -----------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "headless Chromium is not installed (apt-get install chromium chromium-driver); "
            ".ci/run installs it"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,900",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _offsets(canvas, path: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Selenium offsets (from the canvas's centre) of 28x28 pixel coordinates."""
    size = canvas.size["width"]
    scale = size / 28
    return [
        (round((x + 0.5) * scale - size / 2), round((y + 0.5) * scale - size / 2)) for x, y in path
    ]


def _draw(driver, canvas, paths: list[list[tuple[int, int]]]) -> None:
    """Draw ``paths`` (28x28 pixel coordinates) on the canvas with real mouse events."""
    from selenium.webdriver.common.action_chains import ActionChains

    actions = ActionChains(driver, duration=5)
    for path in paths:
        points = _offsets(canvas, path)
        actions.move_to_element_with_offset(canvas, *points[0]).click_and_hold()
        for p in points[1:]:
            actions.move_to_element_with_offset(canvas, *p)
        actions.release()
    actions.perform()


READING = """
  if (window.mnistlab.shown() !== window.mnistlab.version()) return null;
  const message = document.getElementById('message');
  const cards = [...document.querySelectorAll('#readings .reading')].map((card) => {
    const bars = [...card.querySelectorAll('.bars li')];
    const why = card.querySelector('.why-map');
    const d = why.getContext('2d').getImageData(0, 0, 28, 28).data;
    let tinted = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2]) tinted++;
    return {name: card.querySelector('.name').textContent,
            label: card.querySelector('.prediction').dataset.label ?? null,
            shown: card.querySelector('.digit').textContent,
            p: bars.map((b) => Number(b.dataset.p)),
            pct: bars.map((b) => b.querySelector('.pct').textContent),
            why: card.querySelector('.why').hidden ? 0 : tinted,
            units: card.querySelectorAll('.units canvas').length};
  });
  return {version: window.mnistlab.version(), message: message.textContent,
          notDigit: message.classList.contains('no-digit'),
          hint: !document.getElementById('empty-hint').hidden, cards};
"""


def _wait_for_reading(driver) -> dict:
    """The page's readings once they answer the latest drawing."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 15, poll_frequency=0.05).until(lambda d: d.execute_script(READING))


def _ink(driver) -> int:
    return driver.execute_script(
        "const c = document.getElementById('canvas');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n;"
    )


def _open(browser, server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    WebDriverWait(browser, 15).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#readings .reading")) == 2
    )


def _drop(browser, png: bytes) -> None:
    """Drop an image file on the canvas, as a person dragging one from their files."""
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const drop = new DataTransfer();
        drop.items.add(new File([bytes], "digit.png", {type: "image/png"}));
        document.getElementById("canvas").dispatchEvent(
            new DragEvent("drop", {dataTransfer: drop, bubbles: true, cancelable: true}));
        """,
        base64.b64encode(png).decode(),
    )


def test_page_reads_while_a_stroke_is_still_being_drawn(browser, server, sample_splits):
    """The bars follow the pen: readings arrive during one long stroke, before it ends."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _open(browser, server)
    canvas = browser.find_element(By.ID, "canvas")
    assert _wait_for_reading(browser)["hint"]  # an empty canvas says what to do
    path = max(strokes(sample_splits.test.images[1].reshape(28, 28).numpy()), key=len)
    points = _offsets(canvas, path)
    points = (points * (40 // len(points) + 1))[:40]  # about 2 s of drawing, back and forth
    actions = ActionChains(browser, duration=50)
    actions.move_to_element_with_offset(canvas, *points[0]).click_and_hold()
    for p in points[1:]:
        actions.move_to_element_with_offset(canvas, *p)
    actions.perform()  # the pen is still down
    during = browser.execute_script("return window.mnistlab.whileDrawing()")
    ActionChains(browser).release().perform()
    assert during >= 2, f"{during} readings while the stroke was drawn"
    reading = _wait_for_reading(browser)
    assert not reading["hint"] and all(c["label"] is not None for c in reading["cards"])


def test_undo_eraser_brush_and_not_a_digit(browser, server, sample_splits):
    from selenium.webdriver.common.by import By

    _open(browser, server)
    canvas = browser.find_element(By.ID, "canvas")
    paths = strokes(sample_splits.test.images[0].reshape(28, 28).numpy())
    _draw(browser, canvas, paths[:1])
    first = _wait_for_reading(browser)
    one_stroke = _ink(browser)
    _draw(browser, canvas, [[(4, 4), (24, 24)]])
    assert _ink(browser) > one_stroke
    browser.find_element(By.ID, "undo").click()
    assert _ink(browser) == one_stroke  # the diagonal is gone, the first stroke kept
    assert _wait_for_reading(browser)["cards"] == first["cards"]
    browser.find_element(By.ID, "undo").click()
    empty = _wait_for_reading(browser)
    assert _ink(browser) == 0 and empty["hint"]
    assert all(c["label"] is None and c["shown"] == "–" for c in empty["cards"])
    assert browser.find_element(By.ID, "undo").get_attribute("disabled")

    size = browser.find_element(By.ID, "size")  # brush size: a dot twice as wide, 4x the ink
    browser.execute_script(
        "arguments[0].value = 10; arguments[0].dispatchEvent(new Event('input'))", size
    )
    _draw(browser, canvas, [[(14, 14)]])
    small = _ink(browser)
    browser.find_element(By.ID, "clear").click()
    browser.execute_script(
        "arguments[0].value = 20; arguments[0].dispatchEvent(new Event('input'))", size
    )
    _draw(browser, canvas, [[(14, 14)]])
    assert 3 * small < _ink(browser) < 5 * small

    browser.find_element(By.ID, "eraser").click()  # erase it all: the page says what to do again
    browser.execute_script(
        "arguments[0].value = 44; arguments[0].dispatchEvent(new Event('input'))", size
    )
    _draw(browser, canvas, [[(10, 10), (18, 10), (18, 18), (10, 18), (10, 10), (14, 14)]])
    erased = _wait_for_reading(browser)
    assert _ink(browser) == 0 and erased["hint"] and not erased["message"]
    browser.find_element(By.ID, "pen").click()

    from PIL import Image  # a blank picture: "not a digit", never a guess

    buffer = io.BytesIO()
    Image.new("L", (80, 80), 255).save(buffer, format="PNG")
    _drop(browser, buffer.getvalue())
    refused = _wait_for_reading(browser)
    assert refused["notDigit"] and refused["message"].startswith("Not a digit")
    assert all(c["label"] is None and c["shown"] == "–" for c in refused["cards"])


def test_two_models_answer_side_by_side_with_why(browser, server, sample_splits):
    from selenium.webdriver.common.by import By

    _open(browser, server)
    assert browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    canvas = browser.find_element(By.ID, "canvas")
    _draw(browser, canvas, strokes(sample_splits.test.images[1].reshape(28, 28).numpy()))
    reading = _wait_for_reading(browser)
    mlp, softmax = reading["cards"]
    assert (mlp["name"], softmax["name"]) == ("run", "softmax")
    for card in (mlp, softmax):
        assert card["label"] is not None and abs(sum(card["p"]) - 1) < 1e-3
        assert card["why"] > 20  # the overlay tints the drawn pixels
    assert mlp["units"] > 0 and softmax["units"] == 0  # the MLP's most active hidden units
    assert "2 models" in browser.find_element(By.ID, "model-info").text


def test_phone_layout_at_320px(browser, server, sample_splits):
    """At 320x568 (a small phone): no horizontal scroll, the canvas scaled to fit, and each
    model's digit and bars on the first screen."""
    from selenium.webdriver.common.by import By

    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 320, "height": 568, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        _open(browser, server)
        canvas = browser.find_element(By.ID, "canvas")
        _draw(browser, canvas, strokes(sample_splits.test.images[1].reshape(28, 28).numpy()))
        reading = _wait_for_reading(browser)
        assert all(c["label"] is not None for c in reading["cards"])
        layout = browser.execute_script(
            """
            const box = (el) => el.getBoundingClientRect();
            const cards = [...document.querySelectorAll('#readings .reading')];
            return {scroll: document.documentElement.scrollWidth,
                    width: document.documentElement.clientWidth, height: window.innerHeight,
                    canvas: box(document.getElementById('canvas')).width,
                    bottoms: cards.map((c) => Math.max(box(c.querySelector('.digit')).bottom,
                                                       box(c.querySelector('.bars')).bottom)),
                    rights: [...document.querySelectorAll('body *')].map((e) => box(e).right)};
            """
        )
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert layout["width"] == 320 and layout["scroll"] <= 320, layout["scroll"]
    assert max(layout["rights"]) <= 320.5
    assert 200 <= layout["canvas"] < 290
    assert max(layout["bottoms"]) <= layout["height"], layout


@pytest.mark.slow
def test_page_reads_digits_drawn_in_chromium(browser, server, sample_splits, tmp_path):
    from selenium.webdriver.common.by import By

    _open(browser, server)
    canvas = browser.find_element(By.ID, "canvas")
    clear = browser.find_element(By.ID, "clear")
    images = sample_splits.test.images[:24].reshape(-1, 28, 28).numpy()
    labels = sample_splits.test.labels[:24].tolist()
    right, wrong = 0, []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        clear.click()
        _draw(browser, canvas, strokes(image))
        reading = _wait_for_reading(browser)
        assert not reading["message"], reading["message"]
        mlp = reading["cards"][0]
        assert mlp["shown"] == mlp["label"]
        assert abs(sum(mlp["p"]) - 1.0) < 1e-3  # the bars sum to 100%
        assert abs(sum(float(t.rstrip("%")) for t in mlp["pct"]) - 100.0) < 1.0
        if int(mlp["label"]) == label:
            right += 1
        else:
            wrong.append((index, label, mlp["label"]))
        if index == 1:  # a 3, for the README
            time.sleep(0.3)  # the bars' short transition
            browser.save_screenshot(str(tmp_path / "serve.png"))
            if os.environ.get("MNISTLAB_UPDATE_SCREENSHOT"):
                browser.save_screenshot(str(SCREENSHOT))
    print(f"the page read {right} of {len(labels)} drawn digits right; wrong: {wrong}")
    assert right >= 0.75 * len(labels), f"read {right} of {len(labels)}; wrong: {wrong}"

    # A file dropped on the canvas goes through the same path (dark ink on light paper, 4x size).
    from PIL import Image

    index = 2
    digit = (255 - images[index] * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(digit).resize((112, 112)).save(buffer, format="PNG")
    _drop(browser, buffer.getvalue())
    dropped = _wait_for_reading(browser)
    assert not dropped["message"] and int(dropped["cards"][0]["label"]) == labels[index]

    clear.click()
    cleared = _wait_for_reading(browser)
    assert cleared["hint"] and all(c["label"] is None for c in cleared["cards"])
    assert all(t == "0.0%" for t in cleared["cards"][0]["pct"])
    assert _ink(browser) == 0
