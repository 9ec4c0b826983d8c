// Drives the P3S Point Picker in headless Chromium against a running ComfyUI server.
// Usage: node tests/browser/picker.spec.mjs <server url> <artifacts dir> [image name] [W] [H] [points json]
// Prints one JSON line (prefix "P3S_RESULT ") with everything tests/test_browser.py asserts on.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core"); // resolved through NODE_PATH (cached node_modules)

const [url, artifacts, imageName = "p3s_browser.png", W = "256", H = "192", clicksJson = "[]"] = process.argv.slice(2);
const IMG_W = Number(W), IMG_H = Number(H);
const clicks = JSON.parse(clicksJson); // [{x, y, button: "left"|"right"}] in image pixels
fs.mkdirSync(artifacts, { recursive: true });
const out = { steps: [], console: [], selects: [] };
const t0 = Date.now();
const step = (s) => out.steps.push([s, Date.now() - t0]);

const browser = await chromium.launch({
  executablePath: process.env.P3S_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on("console", (m) => { if (m.type() === "error" || /P3S/.test(m.text())) out.console.push(`${m.type()}: ${m.text()}`.slice(0, 400)); });
page.on("pageerror", (e) => out.console.push(`pageerror: ${String(e).slice(0, 400)}`));
page.on("response", async (r) => {
  if (r.url().includes("/p3s/select")) out.selects.push(r.status());
});

async function shot(name) {
  await page.screenshot({ path: path.join(artifacts, name) });
}

async function openUI() {
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.P3SPointPicker
    && document.querySelector("canvas#graph-canvas"), null, { timeout: 60000 });
  await page.waitForTimeout(500);
}

async function pickerInfo() {
  return page.evaluate(() => {
    const n = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
    if (!n) return null;
    const p = n.p3sPicker;
    const tw = n.widgets.find((w) => w.name === "points");
    return {
      id: n.id, value: tw?.value, textHidden: !!tw?.hidden,
      image: p?.image ? [p.image.naturalWidth, p.image.naturalHeight] : null,
      imageRef: p?.imageRef, points: p ? JSON.parse(JSON.stringify(p.points)) : null,
      selectCount: p?.selectCount ?? 0, lastSelect: p?.lastSelect, overlayDrawn: !!p?.overlayDrawn,
    };
  });
}

try {
  await openUI();
  step("ui ready");
  out.vueNodes = await page.evaluate(() => window.app.extensionManager?.setting?.get?.("Comfy.VueNodes.Enabled") ?? null);

  // Build LoadImage -> P3SPointPicker -> MaskToImage -> PreviewImage.
  out.pickerId = await page.evaluate((imageName) => {
    const { app, LiteGraph } = window;
    app.graph.clear();
    const load = LiteGraph.createNode("LoadImage");
    load.pos = [20, 60];
    app.graph.add(load);
    const picker = LiteGraph.createNode("P3SPointPicker");
    picker.pos = [360, 60];
    app.graph.add(picker);
    picker.setSize([440, 520]);
    const m2i = LiteGraph.createNode("MaskToImage");
    m2i.pos = [830, 60];
    app.graph.add(m2i);
    const prev = LiteGraph.createNode("PreviewImage");
    prev.pos = [830, 200];
    app.graph.add(prev);
    load.connect(0, picker, 0);
    picker.connect(1, m2i, 0);
    m2i.connect(0, prev, 0);
    const combo = load.widgets.find((w) => w.name === "image");
    if (!combo.options.values.includes(imageName)) combo.options.values.push(imageName);
    combo.value = imageName;
    combo.callback?.(imageName);
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [80, 60];
    app.graph.setDirtyCanvas(true, true);
    return picker.id;
  }, imageName);
  step("graph built");

  await page.waitForFunction((dims) => {
    const n = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
    const im = n?.p3sPicker?.image;
    return im && im.naturalWidth === dims[0] && im.naturalHeight === dims[1];
  }, [IMG_W, IMG_H], { timeout: 20000 });
  await page.waitForTimeout(400); // DOM layer positions the widget on the next frames
  step("image shown");
  out.before = await pickerInfo();

  await page.waitForFunction((id) => document.querySelector(`canvas[data-p3s-node="${id}"]`), out.pickerId, { timeout: 5000 });
  const canvas = page.locator(`canvas[data-p3s-node="${out.pickerId}"]`);
  const box = await canvas.boundingBox();
  out.canvasBox = box;
  for (const c of clicks) {
    const x = box.x + (c.x / IMG_W) * box.width, y = box.y + (c.y / IMG_H) * box.height;
    await page.mouse.click(x, y, { button: c.button || "left" });
    await page.waitForTimeout(120);
  }
  step("clicked");
  // The debounced preview: wait until the route answered for the final points and the overlay is drawn.
  await page.waitForFunction((n) => {
    const node = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
    const p = node?.p3sPicker;
    return p && p.overlayDrawn && p.lastSelect?.ok && p.overlayFor === node.widgets.find((w) => w.name === "points").value
      && (p.points.positive.length + p.points.negative.length) === n;
  }, clicks.length, { timeout: 20000 });
  step("overlay drawn");
  out.after = await pickerInfo();
  // Pixels of the drawn canvas at given image positions (overlay tint check).
  out.pixels = await page.evaluate(([id, probes]) => {
    const c = document.querySelector(`canvas[data-p3s-node="${id}"]`);
    const n = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
    const im = n.p3sPicker.image;
    const ctx = c.getContext("2d");
    return probes.map(([x, y]) => Array.from(ctx.getImageData(Math.round(x / im.naturalWidth * c.width),
      Math.round(y / im.naturalHeight * c.height), 1, 1).data));
  }, [out.pickerId, JSON.parse(process.env.P3S_PROBES || "[]")]);
  await shot("picker_points.png");

  // Drag moves a point, a click on a point deletes it, Undo brings both back.
  const at = (x, y) => [box.x + (x / IMG_W) * box.width, box.y + (y / IMG_H) * box.height];
  const value = () => page.evaluate(() => JSON.parse(window.app.graph._nodes
    .find((x) => x.type === "P3SPointPicker").widgets.find((w) => w.name === "points").value));
  const p2 = clicks.filter((c) => (c.button || "left") === "left")[1];
  if (p2) {
    const [sx, sy] = at(p2.x, p2.y), [ex, ey] = at(p2.x, p2.y + 50);
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
    await page.waitForFunction(() => {
      const n = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
      return n.p3sPicker.overlayFor === n.widgets.find((w) => w.name === "points").value && n.p3sPicker.overlayDrawn;
    }, null, { timeout: 10000 });
    step("drag/delete/undo");
  }
  // Typing JSON into the (hidden) text widget still drives the canvas.
  out.typed = await page.evaluate(async () => {
    const n = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
    const w = n.widgets.find((x) => x.name === "points");
    const keep = w.value;
    w.value = '[{"x": 10, "y": 20}]';
    await new Promise((r) => setTimeout(r, 700));
    const seen = JSON.parse(JSON.stringify(n.p3sPicker.points));
    w.value = keep;
    await new Promise((r) => setTimeout(r, 700));
    return { seen, restored: JSON.parse(JSON.stringify(n.p3sPicker.points)) };
  });

  // Export (API) path: what the frontend would queue.
  out.apiPrompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
  const saved = await page.evaluate(() => JSON.stringify(window.app.graph.serialize()));

  // Reload: the frontend restores the workflow it persisted; fall back to loading the serialised one.
  await page.waitForTimeout(1200); // let the change tracker persist the edit
  out.storedBeforeReload = await page.evaluate(() => {
    const t = (s) => { try { return JSON.parse(s).nodes.map((n) => n.type); } catch { return null; } };
    const cid = sessionStorage.getItem("clientId");
    return { local: t(localStorage.getItem("workflow")), session: t(sessionStorage.getItem(`workflow:${cid}`)) };
  });
  await page.reload({ waitUntil: "domcontentloaded" });
  await openUI();
  out.storageKeys = await page.evaluate(() => [Object.keys(localStorage), Object.keys(sessionStorage)]);
  const restored = await page.waitForFunction(() => !!window.app.graph._nodes.find((x) => x.type === "P3SPointPicker"),
    null, { timeout: 6000 }).then(() => true, () => false);
  out.reloadRestoredFromStorage = restored;
  if (!restored) {
    await page.evaluate((s) => window.app.loadGraphData(JSON.parse(s)), saved);
  }
  await page.waitForFunction(() => {
    const n = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
    return n?.p3sPicker?.image && n.p3sPicker.overlayDrawn;
  }, null, { timeout: 20000 });
  step("reloaded");
  out.reloaded = await pickerInfo();
  await shot("picker_reloaded.png");

  // Queue it: the backend gets the points of the widget. The server is shared with other tests,
  // so only a history entry that appears after this queueing counts.
  const before = new Set(Object.keys(await page.evaluate(async () => (await fetch("/api/history")).json())));
  const res = await page.evaluate(async () => {
    const r = await window.app.queuePrompt(0, 1);
    return r ?? null;
  });
  step("queued");
  const t1 = Date.now();
  let entry = null;
  while (Date.now() - t1 < 60000) {
    const hist = await page.evaluate(async () => (await fetch("/api/history")).json());
    const ids = Object.keys(hist).filter((k) => !before.has(k));
    const done = ids.map((k) => hist[k]).find((h) => h.status?.completed !== undefined
      && Object.values(h.prompt?.[2] || {}).some((n) => n.class_type === "P3SPointPicker"));
    if (done) { entry = done; break; }
    await page.waitForTimeout(300);
  }
  step("executed");
  if (entry) {
    const prompt = entry.prompt[2];
    const pid = Object.keys(prompt).find((k) => prompt[k].class_type === "P3SPointPicker");
    out.history = { status: entry.status?.status_str, points: prompt[pid].inputs.points,
      pickerOutputs: entry.outputs?.[pid] ?? null, pickerId: pid };
  }
  // the executed preview reaches the widget (onExecuted)
  await page.waitForFunction(() => {
    const n = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
    return !!n?.p3sPicker?.executedRef;
  }, null, { timeout: 10000 }).then(() => { out.executedRefSeen = true; }, () => { out.executedRefSeen = false; });
  await shot("picker_executed.png");

  // Drop an image file onto the widget: uploaded to input/ and selected in the connected Load Image.
  out.dropped = await page.evaluate(async (imageName) => {
    const blob = await (await fetch(`/api/view?filename=${encodeURIComponent(imageName)}&type=input`)).blob();
    const dt = new DataTransfer();
    dt.items.add(new File([blob], "p3s_dropped.png", { type: "image/png" }));
    const n = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
    const wrap = n.p3sPicker.root.querySelector(".p3s-picker-wrap");
    wrap.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    const t = Date.now();
    while (Date.now() - t < 10000) {
      if (n.p3sPicker.imageRef?.filename === "p3s_dropped.png") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const load = window.app.graph._nodes.find((x) => x.type === "LoadImage");
    return { loadImageValue: load.widgets.find((w) => w.name === "image").value, pickerRef: n.p3sPicker.imageRef,
      workflowHasBase64: JSON.stringify(window.app.graph.serialize()).includes("base64") };
  }, imageName);
  step("dropped");

  // Removing the node disposes the widget (element detached, polling stopped).
  out.removed = await page.evaluate(async () => {
    const n = window.app.graph._nodes.find((x) => x.type === "P3SPointPicker");
    const p = n.p3sPicker;
    window.app.graph.remove(n);
    await new Promise((r) => setTimeout(r, 200));
    return { disposed: p.disposed, attached: document.contains(p.root), listeners: p.listeners.length };
  });
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e?.stack || e).slice(0, 3000);
  try { await shot("picker_failure.png"); } catch {}
} finally {
  out.totalMs = Date.now() - t0;
  await browser.close();
  console.log("P3S_RESULT " + JSON.stringify(out));
}
