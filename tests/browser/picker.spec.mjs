// Drives the P3S Point Picker in headless Chromium against a running ComfyUI server, in the legacy canvas and in
// Vue nodes mode ("Nodes 2.0"), one page per mode in one browser.
// Usage: node tests/browser/picker.spec.mjs '<config json>'
//   config: {url, artifacts, label, modes: ["legacy", "vue"], images: {<mode>: file in input/}, W, H,
//            clicks: [{x, y, button}], probes: [[x, y]], pack: <custom_nodes folder name>}
// One image file per mode: ComfyUI caches node outputs, and a cached node reports no UI output to the page.
// Prints one line "P3S_RESULT {modes: {<mode>: {...}}}" with everything tests/test_browser.py asserts on;
// errors: {<section>: message} for the sections that failed (the others still ran).
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core"); // resolved through NODE_PATH (cached node_modules)

const cfg = JSON.parse(process.argv[2]);
const IMG_W = cfg.W, IMG_H = cfg.H;
const PACK_URL = `/extensions/${cfg.pack}/`; // where the frontend serves the pack's web/ files
const EMPTY = [300, 800]; // a point of the viewport on empty canvas, away from the nodes and the toolbars
fs.mkdirSync(cfg.artifacts, { recursive: true });

// Runs in the page before the frontend: records deprecation warnings with the stack that caused them (to tell
// the pack's own deprecated calls from the frontend's) and every timer the pack's files start.
function instrument(packUrl) {
  const warnings = (window.__p3sWarnings = []);
  const timers = (window.__p3sTimers = { interval: 0, timeout: 0, frame: 0 });
  const fromPack = () => String(new Error().stack || "").split("\n").slice(2).some((l) => l.includes(packUrl));
  const warn = console.warn.bind(console);
  console.warn = function (...args) {
    const msg = args.map((a) => String(a)).join(" ");
    if (/deprecat/i.test(msg)) warnings.push({ msg: msg.slice(0, 300), stack: String(new Error().stack || "") });
    return warn(...args);
  };
  for (const [name, key] of [["setInterval", "interval"], ["setTimeout", "timeout"], ["requestAnimationFrame", "frame"]]) {
    const original = window[name].bind(window);
    window[name] = function (...args) {
      if (fromPack()) timers[key]++;
      return original(...args);
    };
  }
}

// ---------- helpers evaluated in the page ----------
const IN_PAGE = `
window.p3sGraph = () => window.app.rootGraph ?? window.app.graph;
window.p3sPickerNode = () => window.p3sGraph().nodes.find((x) => x.type === "P3SPointPicker");
window.p3sPointsValue = () => window.p3sPickerNode()?.widgets.find((w) => w.name === "points")?.value;
window.p3sTracker = () => window.app.extensionManager?.workflow?.activeWorkflow?.changeTracker;
// Whether the tracker's current state equals the graph (null: this frontend has no static graphEqual to ask).
window.p3sTrackerEqual = (t) => t.constructor?.graphEqual
  ? t.constructor.graphEqual(t.activeState, JSON.parse(JSON.stringify(window.p3sGraph().serialize()))) : null;
`;

async function runMode(context, mode) {
  const out = { mode, steps: [], console: [], selects: [] };
  const t0 = Date.now();
  const step = (s) => out.steps.push([s, Date.now() - t0]);
  const res = await fetch(cfg.url + "/api/settings", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ "Comfy.TutorialCompleted": true, "Comfy.VueNodes.Enabled": mode === "vue" }),
  });
  if (!res.ok) throw new Error(`settings: ${res.status}`);
  const page = await context.newPage();
  const image = cfg.images[mode];
  page.on("console", (m) => { if (m.type() === "error" || /P3S/.test(m.text())) out.console.push(`${m.type()}: ${m.text()}`.slice(0, 400)); });
  page.on("pageerror", (e) => out.console.push(`pageerror: ${String(e?.stack || e).slice(0, 600)}`));
  page.on("response", (r) => { if (r.url().includes("/p3s/select")) out.selects.push(r.status()); });
  const shot = (name) => page.screenshot({ path: path.join(cfg.artifacts, `${cfg.label}_${mode}_${name}.png`) });

  async function openUI() {
    await page.goto(cfg.url, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.P3SPointPicker
      && document.querySelector("canvas#graph-canvas"), null, { timeout: 90000 });
    await page.evaluate(IN_PAGE);
    await page.evaluate(() => { window.LiteGraph.alwaysRepeatWarnings = true; }); // ours even if the frontend warned first
    await page.waitForTimeout(500);
  }
  const pickerInfo = () => page.evaluate(() => {
    const n = window.p3sPickerNode();
    if (!n) return null;
    const p = n.p3sPicker;
    const tw = n.widgets.find((w) => w.name === "points");
    const root = p?.root;
    return {
      id: n.id, value: tw?.value, textHidden: !!tw?.hidden,
      image: p?.image ? [p.image.naturalWidth, p.image.naturalHeight] : null,
      imageRef: p?.imageRef, points: p ? JSON.parse(JSON.stringify(p.points)) : null,
      selectCount: p?.selectCount ?? 0, lastSelect: p?.lastSelect, overlayDrawn: !!p?.overlayDrawn,
      mounted: !!root && document.contains(root), pickersInPage: document.querySelectorAll(".p3s-picker canvas").length,
      legend: root?.querySelector(".p3s-picker-legend")?.innerText ?? null,
      legendShown: !!root && root.querySelector(".p3s-picker-legend")?.offsetParent !== null,
    };
  });
  // Until the widget shows the image with the tint for the stored points (the debounced /p3s/select answered).
  const waitOverlay = (timeout = 20000) => page.waitForFunction(() => {
    const n = window.p3sPickerNode();
    const p = n?.p3sPicker;
    return p && p.image && p.overlayDrawn && p.lastSelect?.ok && p.overlayFor === window.p3sPointsValue();
  }, null, { timeout });
  const canvasBox = async () => {
    const id = await page.evaluate(() => window.p3sPickerNode().id);
    await page.waitForFunction((id) => document.querySelector(`canvas[data-p3s-node="${id}"]`)?.isConnected, id, { timeout: 10000 });
    return page.locator(`canvas[data-p3s-node="${id}"]`).boundingBox();
  };
  const at = (box, x, y) => [box.x + (x / IMG_W) * box.width, box.y + (y / IMG_H) * box.height];
  const value = async () => JSON.parse(await page.evaluate(() => window.p3sPointsValue()));
  // The frontend's change tracker: its queue lengths, whether it is restoring a state, and whether the state it
  // holds as current equals the graph (false: a change not yet recorded, or one made behind its back).
  const tracker = () => page.evaluate(() => {
    const t = window.p3sTracker();
    if (!t) return null;
    const equal = window.p3sTrackerEqual(t);
    const now = equal ? null : JSON.parse(JSON.stringify(window.p3sGraph().serialize()));
    const diff = [];
    const walk = (a, b, path) => {
      if (diff.length >= 8) return;
      if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") {
        if (JSON.stringify(a) !== JSON.stringify(b)) {
          const m = /^\.nodes\.(\d+)\./.exec(path);
          diff.push([path, m ? now.nodes[+m[1]].type : null, JSON.stringify(a)?.slice(0, 200), JSON.stringify(b)?.slice(0, 200)]);
        }
        return;
      }
      for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) walk(a[k], b[k], path + "." + k);
    };
    if (!equal) walk(t.activeState, now, "");
    return { undo: t.undoQueue?.length ?? null, redo: t.redoQueue?.length ?? null,
      restoring: !!(t._restoringState ?? t.restoringState), equal, diff };
  });
  const clickEmpty = async () => { await page.mouse.click(...EMPTY); await page.waitForTimeout(250); };

  // Each section records its own error and the next ones still run, so one regression fails its own tests only.
  out.errors = {};
  const section = async (name, fn) => {
    try {
      await fn();
      step(name);
      return true;
    } catch (e) {
      out.errors[name] = String(e?.stack || e).slice(0, 2000);
      try { await shot(`failure_${name}`); } catch {}
      return false;
    }
  };
  let box = null;

  const ready = await section("setup", async () => {
    await openUI();
    out.vueNodes = await page.evaluate(() => !!window.LiteGraph.vueNodesMode);
    // LoadImage -> P3SPointPicker -> MaskToImage -> PreviewImage, loaded as a workflow (the change tracker's
    // starting state, as when a user opens a file).
    out.pickerId = await page.evaluate(async (imageName) => {
      const { app, LiteGraph } = window;
      const g = window.p3sGraph();
      g.clear();
      const add = (type, pos) => { const n = LiteGraph.createNode(type); n.pos = pos; g.add(n); return n; };
      const load = add("LoadImage", [20, 60]);
      const picker = add("P3SPointPicker", [360, 60]);
      picker.setSize([440, 520]);
      const m2i = add("MaskToImage", [830, 60]);
      const prev = add("PreviewImage", [830, 200]);
      load.connect(0, picker, 0);
      picker.connect(1, m2i, 0);
      m2i.connect(0, prev, 0);
      const combo = load.widgets.find((w) => w.name === "image");
      if (!combo.options.values.includes(imageName)) combo.options.values.push(imageName);
      combo.value = imageName;
      const wf = g.serialize();
      wf.extra = { ...(wf.extra || {}), ds: { scale: 1, offset: [80, 60] } };
      await app.loadGraphData(wf);
      return window.p3sPickerNode().id;
    }, image);
    await page.waitForFunction((dims) => {
      const im = window.p3sPickerNode()?.p3sPicker?.image;
      return im && im.naturalWidth === dims[0] && im.naturalHeight === dims[1];
    }, [IMG_W, IMG_H], { timeout: 20000 });
    await page.waitForTimeout(400); // the DOM layer positions the widget on the next frames
    out.before = await pickerInfo();
  });
  if (!ready) {
    await page.close();
    return out;
  }

  await section("idle", async () => {
    // Nothing happens, so the pack starts no timer (it follows events; it does not poll).
    const timersAt = () => page.evaluate(() => ({ ...window.__p3sTimers }));
    const before = await timersAt();
    await page.waitForTimeout(1500);
    out.idleTimers = { before, after: await timersAt() };
  });

  const clicked = await section("clicks", async () => {
    box = await canvasBox();
    out.canvasBox = box;
    for (const c of cfg.clicks) {
      await page.mouse.click(...at(box, c.x, c.y), { button: c.button || "left" });
      await page.waitForTimeout(120);
    }
    await waitOverlay();
    out.after = await pickerInfo();
    out.pixels = await page.evaluate(([id, probes]) => {
      const c = document.querySelector(`canvas[data-p3s-node="${id}"]`);
      const im = window.p3sPickerNode().p3sPicker.image;
      const ctx = c.getContext("2d");
      return probes.map(([x, y]) => Array.from(ctx.getImageData(Math.round(x / im.naturalWidth * c.width),
        Math.round(y / im.naturalHeight * c.height), 1, 1).data));
    }, [out.pickerId, cfg.probes]);
    await shot("points");
  });

  if (clicked) {
    await section("drag", async () => {
      // Drag moves a point, a click on a point deletes it, the widget's Undo brings both back.
      const p2 = cfg.clicks.filter((c) => (c.button || "left") === "left")[1];
      const [sx, sy] = at(box, p2.x, p2.y), [ex, ey] = at(box, p2.x, p2.y + 50);
      await page.mouse.move(sx, sy);
      await page.mouse.down();
      await page.mouse.move((sx + ex) / 2, (sy + ey) / 2, { steps: 4 });
      await page.mouse.move(ex, ey, { steps: 4 });
      await page.mouse.up();
      out.dragged = await value();
      await page.mouse.click(ex, ey);
      out.deleted = await value();
      const undo = page.locator(".p3s-picker-bar button", { hasText: "Undo" });
      await undo.click();
      out.undo1 = await value();
      await undo.click();
      out.undo2 = await value();
      await waitOverlay();
    });

    await section("typed", async () => {
      // The JSON box: a KJNodes list typed with real keys drives the canvas; pasting the old text restores it.
      const keep = await page.evaluate(() => window.p3sPointsValue());
      const json = page.locator(".p3s-picker-bar button", { hasText: "JSON" });
      await json.click();
      const editor = page.locator("textarea.p3s-picker-json");
      const typeInto = async (text, keys) => {
        await editor.click({ timeout: 5000 });
        await page.keyboard.press("Control+a");
        if (keys) await page.keyboard.type(text); // key by key
        else await page.keyboard.insertText(text); // one input event, as a paste
        await clickEmpty(); // blur: the edit is committed (change event)
      };
      try {
        await typeInto('[{"x": 10, "y": 20}]', true);
        out.typed = { seen: await page.evaluate(() => JSON.parse(JSON.stringify(window.p3sPickerNode().p3sPicker.points))) };
        await typeInto(keep, false);
        out.typed.restored = await page.evaluate(() => JSON.parse(JSON.stringify(window.p3sPickerNode().p3sPicker.points)));
        out.typed.value = await page.evaluate(() => window.p3sPointsValue());
      } finally {
        await json.click();
      }
      await waitOverlay();
    });
  }

  await section("reload", async () => {
    out.apiPrompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
    // The frontend restores the workflow it persisted from the tracker's state (real clicks and keys only).
    await page.waitForTimeout(1200); // the draft/session save runs on its own debounce
    out.valueBeforeReload = await page.evaluate(() => window.p3sPointsValue());
    await page.reload({ waitUntil: "domcontentloaded" });
    await openUI();
    out.reloadRestoredFromStorage = await page.waitForFunction(() => !!window.p3sPickerNode(), null, { timeout: 8000 })
      .then(() => true, () => false);
    if (!out.reloadRestoredFromStorage) throw new Error("the reloaded page has no Point Picker");
    await waitOverlay();
    await page.waitForTimeout(400);
    out.reloaded = await pickerInfo();
    await shot("reloaded");
  });

  await section("run", async () => {
    // Run it: the backend gets the widget's points; the picture stays in the widget only.
    const boxBefore = await canvasBox();
    const before = new Set(Object.keys(await page.evaluate(async () => (await fetch("/api/history")).json())));
    await page.evaluate(async () => { await window.app.queuePrompt(0, 1); });
    const t1 = Date.now();
    let entry = null;
    while (!entry && Date.now() - t1 < 60000) {
      const hist = await page.evaluate(async () => (await fetch("/api/history")).json());
      entry = Object.keys(hist).filter((k) => !before.has(k)).map((k) => hist[k])
        .find((h) => h.status?.completed !== undefined
          && Object.values(h.prompt?.[2] || {}).some((n) => n.class_type === "P3SPointPicker"));
      if (!entry) await page.waitForTimeout(300);
    }
    if (!entry) throw new Error("the queued prompt did not finish in 60 s");
    const prompt = entry.prompt[2];
    const pid = Object.keys(prompt).find((k) => prompt[k].class_type === "P3SPointPicker");
    out.history = { status: entry.status?.status_str, points: prompt[pid].inputs.points,
      pickerOutputs: entry.outputs?.[pid] ?? null, pickerId: pid };
    out.executedRefSeen = await page.waitForFunction(() => !!window.p3sPickerNode()?.p3sPicker?.executedRef,
      null, { timeout: 10000 }).then(() => true, () => false);
    await page.waitForTimeout(800); // let both renderers draw whatever the run produced
    const boxAfter = await canvasBox();
    out.afterRun = await page.evaluate(() => {
      const n = window.p3sPickerNode();
      const vueEl = document.querySelector(`[data-node-id="${n.id}"]`);
      return {
        nodeImgs: n.imgs?.length ?? 0, // what the legacy canvas draws below the widgets
        vueImgs: vueEl ? vueEl.querySelectorAll("img").length : null, // previews the Vue node renders
      };
    });
    out.afterRun.boxBefore = boxBefore;
    out.afterRun.boxAfter = boxAfter;
    await shot("executed");
  });

  await section("undo", async () => {
    // Ctrl+Z / Ctrl+Y rebuild the graph with new node objects: the picker must stay mounted and clickable.
    const countOf = (v) => v.positive.length + v.negative.length;
    const waitCount = (n) => page.waitForFunction((n) => {
      const v = window.p3sPointsValue();
      if (!window.p3sPickerNode()?.p3sPicker?.image || !v) return false;
      const j = JSON.parse(v);
      return j.positive.length + j.negative.length === n;
    }, n, { timeout: 10000 }).then(() => true, () => false);
    const clickAt = async (fx) => { // a real click on the current picker, or null when there is none to click
      const b = await canvasBox().catch(() => null);
      if (!b) return null;
      await page.mouse.click(...at(b, IMG_W * fx, IMG_H * 0.85));
      await page.waitForTimeout(150);
      return countOf(await value());
    };
    // Until the tracker holds the graph as its current state and is not restoring one: a key pressed before that
    // undoes or redoes the wrong state. Fixed waits flaked in CI on a loaded machine.
    // A frontend without the static graphEqual cannot be compared: fall back to a fixed wait, and say so.
    const settled = () => page.waitForFunction(() => {
      const t = window.p3sTracker();
      if (!t || (t._restoringState ?? t.restoringState)) return false;
      return window.p3sTrackerEqual(t) ?? "no graphEqual";
    }, null, { timeout: 4000 }).then(async (h) => {
      const v = await h.jsonValue();
      if (v !== true) await page.waitForTimeout(500);
      return v;
    }, () => false);
    const u = (out.history_undo = {});
    u.tracker = [];
    const track = async (label, ok) => u.tracker.push([label, ok, await tracker()]);
    // The run made the PreviewImage node grow to show its image. Let the tracker record that first (a click on
    // empty canvas), or undo restores the node's old size, the frontend regrows it, and the next mouse or key
    // event records that as a new change, which empties the redo queue (the frontend's doing, not the widget's).
    await clickEmpty();
    await track("start", await settled());
    u.n0 = countOf(await value());
    u.n1 = await clickAt(0.5);
    await clickEmpty();
    await track("click1", await settled());
    await page.keyboard.press("Control+z");
    u.undone = await waitCount(u.n0);
    await track("undo1", await settled());
    u.afterUndo = await pickerInfo();
    await shot("after_undo");
    u.n2 = await clickAt(0.25);
    await clickEmpty();
    await track("click2", await settled());
    await page.keyboard.press("Control+z"); // back to n0
    await waitCount(u.n0);
    await track("undo2", await settled());
    await page.keyboard.press("Control+y"); // redo: n0 + 1 again
    u.redone = await waitCount(u.n0 + 1);
    await track("redo", await settled());
    u.afterRedo = await pickerInfo();
    u.n3 = await clickAt(0.75);
  });

  await section("kjnodes", async () => {
    // A workflow storing the KJNodes list: shown, but not rewritten, so loading it leaves it unmodified.
    // Control: the same workflow with the points in the pack's own format, loaded the same way (some frontends
    // adjust node sizes on load by themselves; the KJNodes list must not add any change of its own).
    const base = await page.evaluate(() => JSON.stringify(window.p3sGraph().serialize()));
    const loadWithPoints = async (text) => {
      await page.evaluate(async ([base, text]) => {
        const wf = JSON.parse(base);
        wf.nodes.find((n) => n.type === "P3SPointPicker").widgets_values[0] = text;
        await window.app.loadGraphData(wf);
      }, [base, text]);
      await waitOverlay();
      await page.waitForTimeout(300);
      await clickEmpty(); // a mouseup: the tracker compares the graph with the loaded one
      await page.waitForTimeout(300);
      return page.evaluate((text) => {
        const wf = window.app.extensionManager.workflow.activeWorkflow;
        const tracker = window.p3sTracker();
        const stored = (state) => state?.nodes?.find((n) => n.type === "P3SPointPicker")?.widgets_values?.[0];
        const diff = (a, b, at = "", acc = []) => { // where the tracker's state differs from the loaded one
          if (acc.length > 12) return acc;
          if (a && b && typeof a === "object" && typeof b === "object") {
            for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) diff(a[k], b[k], `${at}/${k}`, acc);
          } else if (JSON.stringify(a) !== JSON.stringify(b)) {
            acc.push(`${at}: ${JSON.stringify(a)} -> ${JSON.stringify(b)}`.slice(0, 200));
          }
          return acc;
        };
        return { text, value: window.p3sPointsValue(), isModified: wf?.isModified ?? null,
          changes: diff(tracker?.initialState, tracker?.activeState), stored: stored(tracker?.activeState),
          shown: JSON.parse(JSON.stringify(window.p3sPickerNode().p3sPicker.points)) };
      }, text);
    };
    const [cx, cy] = [cfg.clicks[0].x, cfg.clicks[0].y];
    out.ownFormat = await loadWithPoints(JSON.stringify({ width: IMG_W, height: IMG_H, positive: [{ x: cx, y: cy }], negative: [] }));
    out.kjnodes = await loadWithPoints(JSON.stringify([{ x: cx, y: cy }]));
  });

  await section("drop", async () => {
    // Drop an image file onto the widget: uploaded to input/ and selected in the connected Load Image.
    out.dropped = await page.evaluate(async (imageName) => {
      const blob = await (await fetch(`/api/view?filename=${encodeURIComponent(imageName)}&type=input`)).blob();
      const dt = new DataTransfer();
      dt.items.add(new File([blob], "p3s_dropped.png", { type: "image/png" }));
      const n = window.p3sPickerNode();
      const wrap = n.p3sPicker.root.querySelector(".p3s-picker-wrap");
      wrap.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
      const t = Date.now();
      while (Date.now() - t < 10000 && n.p3sPicker.imageRef?.filename !== "p3s_dropped.png") {
        await new Promise((r) => setTimeout(r, 100));
      }
      const load = window.p3sGraph().nodes.find((x) => x.type === "LoadImage");
      return { loadImageValue: load.widgets.find((w) => w.name === "image").value, pickerRef: n.p3sPicker.imageRef,
        workflowHasBase64: JSON.stringify(window.p3sGraph().serialize()).includes("base64") };
    }, image);
  });

  await section("remove", async () => {
    // Removing the node disposes the widget (listeners gone; the frontend takes the element away).
    out.removed = await page.evaluate(async () => {
      const n = window.p3sPickerNode();
      const p = n.p3sPicker;
      window.p3sGraph().remove(n);
      await new Promise((r) => setTimeout(r, 300));
      return { disposed: p.disposed, attached: document.contains(p.root) && p.root.childElementCount > 0,
        listeners: p.listeners.length };
    });
  });

  await section("report", async () => {
    out.timers = await page.evaluate(() => ({ ...window.__p3sTimers }));
    out.warnings = await page.evaluate((pack) => window.__p3sWarnings.map((w) => ({ msg: w.msg,
      fromPack: w.stack.includes(pack), stack: w.stack.split("\n").slice(1, 8).join(" | ").slice(0, 800) })), PACK_URL);
  });
  out.totalMs = Date.now() - t0;
  await page.close();
  return out;
}

const browser = await chromium.launch({
  executablePath: process.env.P3S_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const result = { modes: {} };
try {
  // One context for every mode: the second mode's page loads hit the HTTP cache the first one filled.
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  await context.addInitScript(instrument, PACK_URL);
  for (const mode of cfg.modes) {
    try {
      result.modes[mode] = await runMode(context, mode);
    } catch (e) {
      result.modes[mode] = { mode, errors: { setup: String(e?.stack || e).slice(0, 2000) } };
    }
  }
} finally {
  await browser.close();
  console.log("P3S_RESULT " + JSON.stringify(result));
}
