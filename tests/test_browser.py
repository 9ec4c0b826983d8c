"""The Point Picker widget in the real frontend (headless Chromium + playwright-core, see scripts/setup_browser.sh).

Builds LoadImage -> P3SPointPicker -> MaskToImage -> PreviewImage in the UI, clicks points on the widget's canvas
with real mouse events, and checks the points JSON, the live overlay, reload persistence and the queued prompt.
Screenshots go to artifacts/browser/ (gitignored).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import scenes
from host import HOST_DIR, REPO

pytestmark = [pytest.mark.server, pytest.mark.browser]

NODE_DIR = Path(os.environ.get("P3S_NODE_DIR", HOST_DIR / "node"))
CHROMIUM = os.environ.get("P3S_CHROMIUM", "/usr/bin/chromium")
SPEC = REPO / "tests" / "browser" / "picker.spec.mjs"
ARTIFACTS = REPO / "artifacts" / "browser"
W, H = 256, 192


def _requirements():
    missing = []
    if not shutil.which("node"):
        missing.append("node")
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append(f"playwright-core in {NODE_DIR}")
    if not Path(CHROMIUM).exists():
        missing.append(CHROMIUM)
    return missing


@pytest.fixture(scope="module")
def browser_run(server):
    missing = _requirements()
    if missing:
        # In CI (.ci/run installs them) a missing browser is a failure, not a silent skip.
        report = pytest.fail if os.environ.get("CI") else pytest.skip
        report("browser test needs " + ", ".join(missing) + ": run scripts/setup_browser.sh")
    image, masks, centers = scenes.two_subjects(W, H, seed=3)
    scenes.save_png(image, server.base / "input" / "p3s_browser.png")
    status, body = server.request("POST", "/api/settings", {"Comfy.TutorialCompleted": True,
                                                            "Comfy.VueNodes.Enabled": False})
    assert status == 200, body
    (cx0, cy0), (cx1, cy1) = centers
    clicks = [{"x": cx0, "y": cy0, "button": "left"}, {"x": cx0, "y": cy0 - 30, "button": "left"},
              {"x": cx1, "y": cy1, "button": "right"}]
    probes = [[cx0 + 20, cy0 + 25], [cx1 + 20, cy1 + 25], [W / 2, 12]]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    proc = subprocess.run(["node", str(SPEC), server.url, str(ARTIFACTS), "p3s_browser.png", str(W), str(H),
                           json.dumps(clicks)], capture_output=True, text=True, timeout=170,
                          env=dict(os.environ, NODE_PATH=str(NODE_DIR / "node_modules"), P3S_CHROMIUM=CHROMIUM,
                                   P3S_PROBES=json.dumps(probes)))
    elapsed = time.time() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("P3S_RESULT ")]
    assert lines, f"no result from the browser script (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(lines[-1][len("P3S_RESULT "):])
    (ARTIFACTS / "result.json").write_text(json.dumps(out, indent=1))
    assert out.get("ok"), f"browser script failed: {out.get('error')}\nconsole: {out.get('console')}\n" \
                          f"steps: {out.get('steps')}\nserver log:\n{server.log()[-2000:]}"
    return {"out": out, "clicks": clicks, "elapsed": elapsed, "masks": masks}


def _assert_points(value: str, clicks, tol=3.0):
    pts = json.loads(value)
    assert (pts["width"], pts["height"]) == (W, H)
    pos = [c for c in clicks if c["button"] == "left"]
    neg = [c for c in clicks if c["button"] == "right"]
    assert len(pts["positive"]) == len(pos) and len(pts["negative"]) == len(neg), pts
    for got, want in zip(pts["positive"] + pts["negative"], pos + neg):
        assert abs(got["x"] - want["x"]) <= tol and abs(got["y"] - want["y"]) <= tol, (got, want)


def test_widget_shows_image_and_clicks_become_pixel_points(browser_run):
    out, clicks = browser_run["out"], browser_run["clicks"]
    assert out["before"]["image"] == [W, H]
    assert out["before"]["imageRef"] == {"filename": "p3s_browser.png", "subfolder": "", "type": "input"}
    assert out["before"]["textHidden"] is True  # the raw JSON widget is hidden, not removed
    _assert_points(out["after"]["value"], clicks)
    assert not [c for c in out["console"] if c.startswith("pageerror")], out["console"]


def test_live_overlay_from_route(browser_run):
    out = browser_run["out"]
    assert out["selects"] and all(s == 200 for s in out["selects"]), out["selects"]
    assert out["after"]["lastSelect"]["ok"] and 0.05 < out["after"]["lastSelect"]["area"] < 0.5
    assert out["after"]["overlayDrawn"]
    sel, other, bg = out["pixels"]
    # the selected subject is tinted blue; the excluded look-alike and the background keep their colours
    assert sel[2] > sel[0], out["pixels"]
    assert other[0] > other[2], out["pixels"]
    assert bg[2] < 200, out["pixels"]


def test_drag_delete_undo_and_typed_json(browser_run):
    out, clicks = browser_run["out"], browser_run["clicks"]
    x, y = clicks[1]["x"], clicks[1]["y"]
    moved = out["dragged"]["positive"][1]
    assert abs(moved["x"] - x) <= 3 and abs(moved["y"] - (y + 50)) <= 3, out["dragged"]
    assert len(out["dragged"]["positive"]) == 2 and len(out["dragged"]["negative"]) == 1
    assert len(out["deleted"]["positive"]) == 1 and out["deleted"]["positive"][0] == out["dragged"]["positive"][0]
    assert out["undo1"] == out["dragged"]
    _assert_points(json.dumps(out["undo2"]), clicks)
    # hand-typed KJNodes list: the canvas shows it in the image's pixels; restoring the text restores the points
    assert out["typed"]["seen"]["positive"] == [{"x": 10, "y": 20}] and out["typed"]["seen"]["width"] == W
    assert out["typed"]["restored"] == json.loads(out["after"]["value"])


def test_points_survive_reload(browser_run):
    out, clicks = browser_run["out"], browser_run["clicks"]
    assert out["reloadRestoredFromStorage"], out.get("storedBeforeReload")  # the frontend's own persistence
    assert out["reloaded"]["value"] == out["after"]["value"]
    _assert_points(out["reloaded"]["value"], clicks)
    assert out["reloaded"]["image"] == [W, H]
    assert out["reloaded"]["overlayDrawn"]


def test_queued_prompt_gets_the_same_points(browser_run):
    out, clicks = browser_run["out"], browser_run["clicks"]
    api_points = next(n["inputs"]["points"] for n in out["apiPrompt"].values() if n["class_type"] == "P3SPointPicker")
    _assert_points(api_points, clicks)
    hist = out.get("history")
    assert hist, "prompt never finished"
    assert hist["status"] == "success", hist
    assert hist["points"] == out["reloaded"]["value"]
    assert hist["pickerOutputs"]["images"][0]["type"] == "temp"
    assert out["executedRefSeen"]


def test_drop_uploads_to_input_and_remove_cleans_up(browser_run, server):
    out = browser_run["out"]
    assert out["dropped"]["pickerRef"] == {"filename": "p3s_dropped.png", "subfolder": "", "type": "input"}
    assert out["dropped"]["loadImageValue"] == "p3s_dropped.png"  # the backend uses the dropped image too
    assert not out["dropped"]["workflowHasBase64"]
    assert (server.base / "input" / "p3s_dropped.png").is_file()
    assert out["removed"] == {"disposed": True, "attached": False, "listeners": 0}


def test_browser_suite_is_fast(browser_run):
    assert browser_run["elapsed"] < 180, browser_run["elapsed"]
