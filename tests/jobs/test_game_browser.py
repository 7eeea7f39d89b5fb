"""The memory-game page played end to end in headless Chromium (Debian's ``chromium``, driven by
Playwright's Python API through ``executable_path``; no Playwright browser download).

A participant arrives from Prolific, taps the first repeated image and presses the space bar at
every other image it has seen before, reloads the page mid-session (the session resumes), and
sees the completion code; the database then holds one response per trial with presses exactly at
the repeats. A second session for the same participant is refused on the page.

``python -m tests.jobs.test_game_browser docs/game.png`` writes the README's screenshot.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from neuromem.game import db
from neuromem.game.app import create_app
from neuromem.game.scoring import image_scores
from neuromem.game.server import background
from neuromem.game.study import Study, make_study

CHROMIUM = "/usr/bin/chromium"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
N_PAIRS, N_FILLERS = 6, 16
SEQUENCE = {"length": 20, "targets": 3, "target_lag": [5, 7], "vigilance": 2,
            "vigilance_lag": [1, 3]}


def write_study(root: Path, *, image_ms: int = 350, gap_ms: int = 200) -> Study:
    """A small study: ``N_PAIRS`` base/lora pairs and ``N_FILLERS`` fillers, drawn shapes as PNGs."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    images = []
    names = ([(f"p{k}_{c}", c, f"p{k}") for k in range(N_PAIRS) for c in ("base", "lora")]
             + [(f"filler{i:02d}", None, None) for i in range(N_FILLERS)])
    for image_id, condition, pair in names:
        picture = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(30, 226, 3)))
        draw = ImageDraw.Draw(picture)
        for _ in range(4):
            x, y = rng.integers(0, 200, 2)
            w, h = rng.integers(30, 120, 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([int(x), int(y), int(x + w), int(y + h)], fill=colour)
        path = root / "images" / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
        images.append({"image_id": image_id, "path": path, "condition": condition, "pair": pair})
    return make_study(root / "study.yaml", name="browser", images=images,
                      completion_code="NM-BROWSER-OK",
                      timing={"image_ms": image_ms, "gap_ms": gap_ms}, sequence=SEQUENCE)


def _launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-gpu"])


_NEXT_TRIAL = """([last]) => {
  const done = !document.getElementById('done').hidden;
  const text = document.getElementById('progress').textContent;
  return done || (text !== '' && text !== last);
}"""


def _play(page, *, reload_at: int) -> tuple[dict[int, str], list[int], list[int], str]:
    """Play like a perfect participant.

    Returns position → image, the positions in the order shown, the pressed (or, for the first
    repeat, tapped) positions and the completion code.
    """
    shown: dict[int, str] = {}
    order: list[int] = []
    pressed: list[int] = []
    last, reloaded = "", False
    while True:
        page.wait_for_function(_NEXT_TRIAL, arg=[last], timeout=15_000)
        if page.is_visible("#done"):
            return shown, order, pressed, page.inner_text("#code")
        last = page.inner_text("#progress")
        position = int(last.split("/")[0]) - 1
        order.append(position)
        image = page.get_attribute("#picture", "src")
        if any(img == image and pos < position for pos, img in shown.items()):
            if pressed:
                page.keyboard.press("Space")
            else:
                page.tap("#frame")  # the first repeat is tapped, as on a touch screen
            pressed.append(position)
        shown[position] = image
        if position == reload_at and not reloaded:
            reloaded, last = True, ""
            page.reload()  # the session token is in sessionStorage: the page resumes


def test_the_page_played_in_chromium_stores_every_response(tmp_path):
    from playwright.sync_api import sync_playwright

    study = write_study(tmp_path)
    engine = db.connect(f"sqlite:///{tmp_path / 'study.db'}")
    app = create_app(study, engine, ADMIN_TOKEN, seed=0)
    query = "?PROLIFIC_PID=alice&STUDY_ID=study-1&SESSION_ID=session-1"
    with background(app) as url, sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_context(has_touch=True).new_page()
            page.goto(url + "/" + query)
            assert "already seen" in page.inner_text("#intro")
            page.click("#start")
            shown, order, pressed, code = _play(page, reload_at=8)
            assert code == "NM-BROWSER-OK"
            page.reload()  # a reload of the last page shows the code again (no new session)
            page.wait_for_selector("#done", state="visible")
            assert page.inner_text("#code") == "NM-BROWSER-OK"
            # the reload resumed where the session was: at the interrupted trial when its
            # response was not sent yet, else at the next one; nothing restarted from 0
            resumed = order[9]
            assert resumed in (8, 9)
            assert order == [*range(9), *range(resumed, SEQUENCE["length"])]

            # a second session for the same participant (a fresh browser profile) is refused
            again = browser.new_context().new_page()
            again.goto(url + "/" + query)
            again.click("#start")
            again.wait_for_function("document.getElementById('error').textContent !== ''")
            assert "already has a session" in again.inner_text("#error")
        finally:
            browser.close()

    frame = db.responses_frame(engine, study)
    assert set(frame["participant"]) == {"alice"}
    assert sorted(frame["position"]) == list(range(SEQUENCE["length"]))  # each trial once
    repeats = frame[frame["repeat"]]
    assert len(repeats) == SEQUENCE["targets"] + SEQUENCE["vigilance"]
    # the page showed the server's sequence, and the presses were stored at exactly the repeats
    assert {p: f"/images/{i}" for p, i in zip(frame["position"], frame["image_id"],
                                              strict=True)} == shown
    assert sorted(frame.loc[frame["response"], "position"]) == sorted(repeats["position"]) \
        == sorted(set(pressed))
    assert (frame.loc[frame["response"], "rt_ms"] > 0).all()
    assert frame.loc[~frame["response"], "rt_ms"].isna().all()
    scores = image_scores(frame)
    assert len(scores) == SEQUENCE["targets"] and (scores["hit_rate"] == 1).all()
    assert (scores["false_alarm_rate"] == 0).all()


def write_screenshot(out: Path) -> None:
    """Open the page in headless Chromium and save a screenshot of the game in play."""
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        study = write_study(Path(folder), image_ms=5000, gap_ms=100)
        engine = db.connect(f"sqlite:///{Path(folder) / 'study.db'}")
        with background(create_app(study, engine, ADMIN_TOKEN)) as url, \
                sync_playwright() as playwright:
            browser = _launch(playwright)
            page = browser.new_page(viewport={"width": 900, "height": 680})
            page.goto(url + "/?PROLIFIC_PID=screenshot")
            page.click("#start")
            page.wait_for_function("document.getElementById('progress').textContent !== ''")
            page.wait_for_function("document.getElementById('picture').complete")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            browser.close()


if __name__ == "__main__":
    write_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/game.png"))
