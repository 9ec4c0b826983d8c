"""The Point Picker widget in the real frontend (headless Chromium + playwright-core, see scripts/setup_browser.sh).

The matrix: {the host's pinned frontend, the newest comfyui-frontend-package (installed outside the host venv and
served with --front-end-root)} x {the legacy canvas, Vue nodes mode}. One server per frontend, one browser run per
frontend (tests/browser/picker.spec.mjs drives both modes), every test below parametrized over the four cases.
The page builds LoadImage -> P3SPointPicker -> MaskToImage -> PreviewImage, clicks points on the widget's canvas
with real mouse events and types with real keys. Screenshots and the raw results go to artifacts/browser/
(gitignored): <frontend>_<mode>_executed.png shows the picker after a run.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import scenes
from host import HOST_DIR, PACK_NAME, REPO, Server

pytestmark = [pytest.mark.server, pytest.mark.browser]

NODE_DIR = Path(os.environ.get("P3S_NODE_DIR", HOST_DIR / "node"))
CHROMIUM = os.environ.get("P3S_CHROMIUM", "/usr/bin/chromium")
SPEC = REPO / "tests" / "browser" / "picker.spec.mjs"
ARTIFACTS = REPO / "artifacts" / "browser"
FRONTENDS_DIR = Path(os.environ.get("P3S_FRONTENDS_DIR", Path.home() / ".cache" / "p3s" / "frontends"))
FRONTENDS = ("pinned", "newest")
MODES = ("legacy", "vue")
W, H = 256, 192


def newest_version() -> str:
    """The newest frontend the suite tests: pinned once, in scripts/setup_browser.sh (which installs it)."""
    if os.environ.get("P3S_FRONTEND_NEWEST"):
        return os.environ["P3S_FRONTEND_NEWEST"]
    text = (REPO / "scripts" / "setup_browser.sh").read_text()
    return re.search(r"^P3S_FRONTEND_NEWEST=\$\{P3S_FRONTEND_NEWEST:-([0-9][0-9.]*)\}", text, re.M).group(1)


def _missing_or_skip(what: list[str]) -> None:
    if what:
        # In CI (.ci/run installs them) a missing browser part is a failure, not a silent skip.
        report = pytest.fail if os.environ.get("CI") else pytest.skip
        report("browser test needs " + ", ".join(what) + ": run scripts/setup_browser.sh")


def _requirements() -> list[str]:
    missing = []
    if not shutil.which("node"):
        missing.append("node")
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append(f"playwright-core in {NODE_DIR}")
    if not Path(CHROMIUM).exists():
        missing.append(CHROMIUM)
    return missing


def _run_spec(srv: Server, label: str, clicks: list, probes: list) -> dict:
    images = {}
    image, _, _ = scenes.two_subjects(W, H, seed=3)
    for mode in MODES:  # one file per mode: ComfyUI would answer the second mode's run from its cache
        images[mode] = f"p3s_browser_{mode}.png"
        scenes.save_png(image, srv.base / "input" / images[mode])
    cfg = {"url": srv.url, "artifacts": str(ARTIFACTS), "label": label, "modes": list(MODES), "images": images,
           "W": W, "H": H, "clicks": clicks, "probes": probes, "pack": PACK_NAME}
    t0 = time.time()
    proc = subprocess.run(["node", str(SPEC), json.dumps(cfg)], capture_output=True, text=True, timeout=480,
                          env=dict(os.environ, NODE_PATH=str(NODE_DIR / "node_modules"), P3S_CHROMIUM=CHROMIUM))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("P3S_RESULT ")]
    assert lines, f"no result from the browser script (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(lines[-1][len("P3S_RESULT "):])
    out["elapsed_s"] = round(time.time() - t0, 1)
    (ARTIFACTS / f"result_{label}.json").write_text(json.dumps(out, indent=1))
    return out


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend(request, tmp_path_factory):
    """One frontend's browser run (both modes): {"label", "version", "server", "clicks", "modes": {mode: result}}."""
    _missing_or_skip(_requirements())
    label = request.param
    own = None
    if label == "pinned":
        srv = request.getfixturevalue("server")  # the suite's server: the host's own frontend package
        version = importlib.metadata.version("comfyui-frontend-package")
    else:
        version = newest_version()
        root = FRONTENDS_DIR / version / "comfyui_frontend_package" / "static"
        _missing_or_skip([] if (root / "index.html").is_file() else [f"comfyui-frontend-package {version} in {root}"])
        own = srv = Server(tmp_path_factory.mktemp(f"frontend_{version}"), extra_args=("--front-end-root", str(root)))
    try:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        _, _, centers = scenes.two_subjects(W, H, seed=3)
        (cx0, cy0), (cx1, cy1) = centers
        clicks = [{"x": cx0, "y": cy0, "button": "left"}, {"x": cx0, "y": cy0 - 30, "button": "left"},
                  {"x": cx1, "y": cy1, "button": "right"}]
        probes = [[cx0 + 20, cy0 + 25], [cx1 + 20, cy1 + 25], [W / 2, 12]]
        out = _run_spec(srv, label, clicks, probes)
        yield {"label": label, "version": version, "server": srv, "clicks": clicks, "modes": out["modes"]}
    finally:
        if own is not None:
            own.stop()


@pytest.fixture(params=MODES)
def case(request, frontend) -> dict:
    """The result of one mode of one frontend (the page came up and showed the picker's image)."""
    out = frontend["modes"].get(request.param)
    assert out is not None, f"{frontend['label']}: no {request.param} run"
    case = {**out, "frontend": frontend}
    need(case, "setup")
    return case


def need(case: dict, *sections: str) -> None:
    """Fail with the browser's own report when a section of the page script that a test reads from broke."""
    errors = {s: case.get("errors", {})[s] for s in sections if s in case.get("errors", {})}
    fe = case["frontend"]
    assert not errors, (f"{fe['label']} frontend {fe['version']}, {case['mode']} mode: page script failed in "
                        f"{', '.join(errors)}:\n" + "\n".join(errors.values()) +
                        f"\nconsole: {case.get('console')}\nsteps: {case.get('steps')}\n"
                        f"server log:\n{fe['server'].log()[-1500:]}")


def _assert_points(value: str, clicks, tol=3.0):
    pts = json.loads(value)
    assert (pts["width"], pts["height"]) == (W, H)
    pos = [c for c in clicks if c["button"] == "left"]
    neg = [c for c in clicks if c["button"] == "right"]
    assert len(pts["positive"]) == len(pos) and len(pts["negative"]) == len(neg), pts
    for got, want in zip(pts["positive"] + pts["negative"], pos + neg):
        assert abs(got["x"] - want["x"]) <= tol and abs(got["y"] - want["y"]) <= tol, (got, want)


def test_widget_shows_image_and_clicks_become_pixel_points(case):
    need(case, "clicks")
    clicks = case["frontend"]["clicks"]
    assert case["vueNodes"] is (case["mode"] == "vue")  # the mode really is the one under test
    assert case["before"]["image"] == [W, H]
    assert case["before"]["imageRef"] == {"filename": f"p3s_browser_{case['mode']}.png", "subfolder": "",
                                          "type": "input"}
    assert case["before"]["textHidden"] is True  # the raw JSON widget is hidden, not removed
    _assert_points(case["after"]["value"], clicks)
    assert not [c for c in case["console"] if c.startswith("pageerror")], case["console"]


def test_clicks_are_explained_on_the_node(case):
    """Once an image is shown, a legend says what each click does (it is hidden while the hint shows)."""
    need(case, "clicks")
    assert case["before"]["legendShown"] and case["after"]["legendShown"]
    legend = case["after"]["legend"].lower()
    for words in ("left click", "right / shift click", "click a point: delete", "drag a point: move"):
        assert words in legend, legend


def test_live_overlay_from_route(case):
    need(case, "clicks")
    assert case["selects"] and all(s == 200 for s in case["selects"]), case["selects"]
    assert case["after"]["lastSelect"]["ok"] and 0.05 < case["after"]["lastSelect"]["area"] < 0.5
    assert case["after"]["overlayDrawn"]
    sel, other, bg = case["pixels"]
    # the selected subject is tinted blue; the excluded look-alike and the background keep their colours
    assert sel[2] > sel[0], case["pixels"]
    assert other[0] > other[2], case["pixels"]
    assert bg[2] < 200, case["pixels"]


def test_drag_delete_undo_and_typed_json(case):
    need(case, "clicks", "drag", "typed")
    clicks = case["frontend"]["clicks"]
    x, y = clicks[1]["x"], clicks[1]["y"]
    moved = case["dragged"]["positive"][1]
    assert abs(moved["x"] - x) <= 3 and abs(moved["y"] - (y + 50)) <= 3, case["dragged"]
    assert len(case["dragged"]["positive"]) == 2 and len(case["dragged"]["negative"]) == 1
    assert len(case["deleted"]["positive"]) == 1 and case["deleted"]["positive"][0] == case["dragged"]["positive"][0]
    assert case["undo1"] == case["dragged"]
    _assert_points(json.dumps(case["undo2"]), clicks)
    # a KJNodes list typed into the JSON box: the canvas shows it in the image's pixels; typing back restores
    assert case["typed"]["seen"]["positive"] == [{"x": 10, "y": 20}] and case["typed"]["seen"]["width"] == W
    assert case["typed"]["restored"] == json.loads(case["after"]["value"])
    assert case["typed"]["value"] == case["after"]["value"]


def test_points_survive_reload(case):
    """Real clicks and keys only: the frontend's own persistence restores exactly the last edit."""
    need(case, "clicks", "reload")
    assert case["reloadRestoredFromStorage"]
    assert case["valueBeforeReload"] == case["after"]["value"]
    assert case["reloaded"]["value"] == case["after"]["value"]
    _assert_points(case["reloaded"]["value"], case["frontend"]["clicks"])
    assert case["reloaded"]["image"] == [W, H]
    assert case["reloaded"]["overlayDrawn"] and case["reloaded"]["mounted"]


def test_queued_prompt_gets_the_same_points(case):
    need(case, "clicks", "reload", "run")
    api_points = next(n["inputs"]["points"] for n in case["apiPrompt"].values()
                      if n["class_type"] == "P3SPointPicker")
    _assert_points(api_points, case["frontend"]["clicks"])
    hist = case.get("history")
    assert hist, "prompt never finished"
    assert hist["status"] == "success", hist
    assert hist["points"] == case["reloaded"]["value"]
    assert hist["pickerOutputs"]["p3s_image"][0]["type"] == "temp"
    assert case["executedRefSeen"]  # the run's image reaches the widget


def test_one_image_after_a_run(case):
    """The run's picture is shown by the widget only: no second preview below it, the canvas keeps its size."""
    need(case, "run")
    run = case["afterRun"]
    assert "images" not in case["history"]["pickerOutputs"], case["history"]["pickerOutputs"]
    assert run["nodeImgs"] == 0, run  # what the legacy canvas would draw below the widgets
    if case["mode"] == "vue":
        assert run["vueImgs"] == 0, run  # a Vue node renders its previews as <img>
    before, after = run["boxBefore"], run["boxAfter"]
    assert abs(before["width"] - after["width"]) <= 1 and abs(before["height"] - after["height"]) <= 1, run


def test_undo_redo_keeps_a_working_picker(case):
    """Ctrl+Z / Ctrl+Y rebuild the graph with new nodes: the picker stays mounted and a click still adds a point."""
    need(case, "undo")
    u = case["history_undo"]
    assert u["n1"] == u["n0"] + 1, u
    assert u["undone"], u  # Ctrl+Z restored the points
    for state in (u["afterUndo"], u["afterRedo"]):
        assert state["mounted"] and state["pickersInPage"] == 1 and state["image"] == [W, H], state
    assert u["n2"] == u["n0"] + 1, u  # a real click after undo
    assert u["redone"], u
    assert u["n3"] == u["n0"] + 2, u  # a real click after redo


def test_kjnodes_workflow_loads_unmodified(case):
    """A workflow storing the KJNodes list is shown but not rewritten: loading it adds no change of its own."""
    need(case, "kjnodes")
    kj, own = case["kjnodes"], case["ownFormat"]
    assert kj["value"] == kj["stored"] == kj["text"], kj
    assert kj["shown"]["positive"] and kj["shown"]["width"] == W, kj
    assert not [c for c in kj["changes"] if "widgets_values" in c or "properties" in c], kj["changes"]
    # Some frontends change node sizes after any load (the pinned one in Vue mode); nothing more is allowed.
    assert kj["changes"] == own["changes"], (kj["changes"], own["changes"])
    if not own["isModified"]:
        assert kj["isModified"] is False, kj


def test_no_deprecated_api_from_the_pack(case):
    need(case, "report")
    ours = [w for w in case["warnings"] if w["fromPack"]]
    assert not ours, ours


def test_no_polling_timers(case):
    """Idle, the widget starts no timer; it never starts an interval."""
    need(case, "idle", "report")
    idle = case["idleTimers"]
    assert idle["after"] == idle["before"], idle
    assert case["timers"]["interval"] == 0, case["timers"]


def test_widget_code_has_no_interval_timer():
    for path in (REPO / "web").rglob("*.js"):
        assert "setInterval" not in path.read_text(), path


def test_drop_uploads_to_input_and_remove_cleans_up(case):
    need(case, "drop", "remove")
    assert case["dropped"]["pickerRef"] == {"filename": "p3s_dropped.png", "subfolder": "", "type": "input"}
    assert case["dropped"]["loadImageValue"] == "p3s_dropped.png"  # the backend uses the dropped image too
    assert not case["dropped"]["workflowHasBase64"]
    assert (case["frontend"]["server"].base / "input" / "p3s_dropped.png").is_file()
    assert case["removed"] == {"disposed": True, "attached": False, "listeners": 0}


def test_screenshot_after_run_saved(case):
    need(case, "run")
    shot = ARTIFACTS / f"{case['frontend']['label']}_{case['mode']}_executed.png"
    assert shot.is_file() and shot.stat().st_size > 10_000, shot
