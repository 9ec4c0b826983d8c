// P3S Point Picker: a click-to-select canvas on the P3SPointPicker node.
// The node's `points` STRING widget stays the single source of truth (JSON in image pixels); this widget
// only edits it. If this file fails to load, the node still works from that text widget.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  MAX_POINTS, clonePoints, countPoints, emptyPoints, fitRect, hitTest, parseImageRef, parsePoints,
  refFromViewUrl, refKey, rescalePoints, serializePoints,
} from "./lib/p3s_points.js";

const NODE_ID = "P3SPointPicker";
const DEBOUNCE_MS = 250;
const POLL_MS = 300;
const HIT_PX = 12; // hit radius on screen (CSS px) for selecting a point
const DRAG_PX = 4; // movement before a press on a point becomes a drag
const POS_COLOR = "#22c55e";
const NEG_COLOR = "#ef4444";
const OVERLAY_RGB = [30, 144, 255];

const STYLE = `
.p3s-picker{display:flex;flex-direction:column;gap:4px;width:100%;height:100%;box-sizing:border-box;
  font:12px sans-serif;color:#ddd;user-select:none}
.p3s-picker-bar{display:flex;gap:4px;align-items:center;flex:0 0 auto}
.p3s-picker-bar button{background:#333;color:#eee;border:1px solid #555;border-radius:4px;padding:1px 8px;
  cursor:pointer;font:12px sans-serif}
.p3s-picker-bar button:hover{background:#444}
.p3s-picker-status{flex:1;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;opacity:.85}
.p3s-picker-status.p3s-error{color:#f87171;opacity:1}
.p3s-picker-wrap{position:relative;flex:1 1 auto;min-height:60px;background:#1118;border-radius:4px;overflow:hidden}
.p3s-picker-wrap.p3s-drop{outline:2px dashed #22c55e}
.p3s-picker-canvas{position:absolute;cursor:crosshair;touch-action:none}
.p3s-picker-hint{position:absolute;inset:0;display:flex;align-items:center;justify-content:center;
  text-align:center;padding:8px;opacity:.6;pointer-events:none}
`;

function ensureStyle() {
  if (document.getElementById("p3s-picker-style")) return;
  const el = document.createElement("style");
  el.id = "p3s-picker-style";
  el.textContent = STYLE;
  document.head.appendChild(el);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function viewUrl(ref, bust) {
  const q = new URLSearchParams({ filename: ref.filename, type: ref.type || "input", subfolder: ref.subfolder || "" });
  if (bust) q.set("rand", String(bust));
  return api.apiURL("/view?" + q.toString());
}

class PointPicker {
  constructor(node) {
    this.node = node;
    this.textWidget = node.widgets?.find((w) => w.name === "points");
    this.points = emptyPoints();
    this.lastText = null;
    this.undoStack = [];
    this.image = null; // HTMLImageElement once loaded
    this.imageRef = null; // {filename, subfolder, type} of the displayed image
    this.imageKey = "";
    this.wantedKey = "";
    this.executedRef = null;
    this.overlay = null; // canvas with the coloured mask
    this.overlayFor = "";
    this.selectCount = 0; // answered /p3s/select calls (tests read it)
    this.lastSelect = null; // {ok, area | error}
    this.drag = null;
    this.abort = null;
    this.timer = null;
    this.loadGen = 0;
    this.disposed = false;
    this.build();
    this.syncFromText(true);
    this.poll = setInterval(() => this.tick(), POLL_MS);
  }

  // ---------- DOM ----------
  build() {
    ensureStyle();
    const root = (this.root = el("div", "p3s-picker"));
    const bar = el("div", "p3s-picker-bar");
    const undo = el("button", null, "Undo");
    undo.title = "Undo the last edit";
    const clear = el("button", null, "Clear");
    clear.title = "Remove all points";
    const json = el("button", null, "JSON");
    json.title = "Show/hide the raw points text (you can type the JSON there)";
    this.status = el("span", "p3s-picker-status", "");
    bar.append(undo, clear, json, this.status);
    const wrap = (this.wrap = el("div", "p3s-picker-wrap"));
    const canvas = (this.canvas = el("canvas", "p3s-picker-canvas"));
    canvas.dataset.p3sNode = String(this.node.id);
    this.hint = el("div", "p3s-picker-hint",
      "Connect a Load Image, or drop an image here.\nLeft click: subject point · right/shift click: exclude point");
    wrap.append(canvas, this.hint);
    root.append(bar, wrap);

    this.listeners = [];
    const on = (target, type, fn, opts) => {
      target.addEventListener(type, fn, opts);
      this.listeners.push([target, type, fn, opts]);
    };
    on(undo, "click", (e) => { e.stopPropagation(); this.undo(); });
    on(clear, "click", (e) => { e.stopPropagation(); this.edit(() => { this.points.positive = []; this.points.negative = []; }); });
    on(json, "click", (e) => { e.stopPropagation(); this.toggleText(); });
    on(canvas, "pointerdown", (e) => this.onDown(e));
    on(canvas, "pointermove", (e) => this.onMove(e));
    on(canvas, "pointerup", (e) => this.onUp(e));
    on(canvas, "pointercancel", () => { this.drag = null; });
    on(canvas, "contextmenu", (e) => { e.preventDefault(); e.stopPropagation(); });
    on(root, "contextmenu", (e) => { e.preventDefault(); e.stopPropagation(); });
    on(wrap, "dragover", (e) => {
      if (e.dataTransfer?.types?.includes("Files")) { e.preventDefault(); e.stopPropagation(); wrap.classList.add("p3s-drop"); }
    });
    on(wrap, "dragleave", () => wrap.classList.remove("p3s-drop"));
    on(wrap, "drop", (e) => {
      wrap.classList.remove("p3s-drop");
      const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
      if (!file) return;
      e.preventDefault();
      e.stopPropagation();
      this.upload(file);
    });
    this.resizeObs = new ResizeObserver(() => this.layout());
    this.resizeObs.observe(wrap);
  }

  setTextHidden(hidden) {
    const w = this.textWidget;
    if (!w) return;
    if (!("_p3sComputeSize" in this)) this._p3sComputeSize = Object.prototype.hasOwnProperty.call(w, "computeSize") ? w.computeSize : undefined;
    w.hidden = hidden;
    // litegraph's layout still reserves space for hidden widgets: give the hidden one no height.
    if (hidden) w.computeSize = () => [0, -4];
    else if (this._p3sComputeSize) w.computeSize = this._p3sComputeSize;
    else delete w.computeSize;
  }

  toggleText() {
    const w = this.textWidget;
    if (!w) return;
    this.setTextHidden(!w.hidden);
    this.node.setSize?.([this.node.size[0], Math.max(this.node.size[1], this.node.computeSize()[1])]);
    this.node.setDirtyCanvas?.(true, true);
  }

  layout() {
    const box = this.wrap.getBoundingClientRect();
    // The DOM layer may scale the element with the canvas zoom: work in the element's own CSS pixels.
    const bw = this.wrap.clientWidth, bh = this.wrap.clientHeight;
    const img = this.image;
    const r = img ? fitRect(bw, bh, img.naturalWidth, img.naturalHeight) : { x: 0, y: 0, w: 0, h: 0 };
    const c = this.canvas;
    c.style.left = r.x + "px";
    c.style.top = r.y + "px";
    c.style.width = r.w + "px";
    c.style.height = r.h + "px";
    const zoom = bw > 0 ? box.width / bw : 1;
    const dpr = (window.devicePixelRatio || 1) * Math.max(1, zoom);
    const pw = Math.max(1, Math.round(r.w * dpr)), ph = Math.max(1, Math.round(r.h * dpr));
    if (c.width !== pw || c.height !== ph) { c.width = pw; c.height = ph; }
    this.hint.style.display = img ? "none" : "flex";
    this.draw();
  }

  // ---------- points text <-> state ----------
  textValue() {
    return this.textWidget ? String(this.textWidget.value ?? "") : "";
  }

  syncFromText(force) {
    const text = this.textValue();
    if (!force && text === this.lastText) return;
    this.lastText = text;
    const parsed = parsePoints(text);
    if (!parsed) { this.setStatus("points text is not valid JSON (fix it or click Clear)", true); return; }
    this.points = parsed;
    if (this.image && parsed.width === 0 && countPoints(parsed)) {
      this.points.width = this.image.naturalWidth; // KJNodes list / no size: the displayed image's pixels
      this.points.height = this.image.naturalHeight;
    }
    this.draw();
    this.scheduleSelect();
  }

  writeText() {
    const text = serializePoints(this.points);
    this.lastText = text;
    if (this.textWidget) {
      this.textWidget.value = text;
      this.textWidget.callback?.(text);
    }
    this.node.setDirtyCanvas?.(true, false);
    this.node.graph?.change?.();
    // Tell the frontend's change tracker now (undo history + the workflow persisted for reloads); it would
    // otherwise only notice on the next mouseup/keydown. Optional: absent on other frontends.
    try {
      app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
    } catch (e) {
      console.debug("P3S: change tracker not reachable", e);
    }
  }

  edit(fn) {
    this.undoStack.push(serializePoints(this.points));
    if (this.undoStack.length > 100) this.undoStack.shift();
    fn();
    this.writeText();
    this.draw();
    this.scheduleSelect();
  }

  undo() {
    const prev = this.undoStack.pop();
    if (prev == null) return;
    this.points = parsePoints(prev) || emptyPoints();
    this.writeText();
    this.draw();
    this.scheduleSelect();
  }

  // ---------- image sources ----------
  upstreamRef() {
    const idx = this.node.inputs?.findIndex((i) => i.name === "image") ?? -1;
    if (idx < 0 || this.node.inputs[idx].link == null) return null;
    const up = this.node.getInputNode?.(idx);
    if (!up) return null;
    const combo = up.widgets?.find((w) => w.name === "image" && typeof w.value === "string");
    if (combo) return parseImageRef(combo.value, "input");
    const src = up.imgs?.[0]?.src;
    return src ? refFromViewUrl(src) : null;
  }

  currentRef() {
    return this.upstreamRef() || this.node.properties?.p3s_image || this.executedRef || null;
  }

  tick() {
    if (this.disposed) return;
    this.canvas.dataset.p3sNode = String(this.node.id); // ids are assigned when the node joins a graph
    this.syncFromText(false);
    const ref = this.currentRef();
    const key = refKey(ref);
    if (key !== this.wantedKey) {
      this.wantedKey = key;
      this.loadImage(ref);
    }
  }

  loadImage(ref, bust) {
    const gen = ++this.loadGen;
    if (!ref) {
      this.image = null;
      this.imageRef = null;
      this.imageKey = "";
      this.overlay = null;
      this.layout();
      return;
    }
    const img = new Image();
    img.onload = () => {
      if (gen !== this.loadGen || this.disposed) return;
      this.image = img;
      this.imageRef = ref;
      this.imageKey = refKey(ref);
      this.overlay = null;
      const W = img.naturalWidth, H = img.naturalHeight;
      if (this.points.width !== W || this.points.height !== H) {
        const had = countPoints(this.points) > 0;
        this.points = rescalePoints(this.points, W, H);
        if (had || this.textValue().trim()) this.writeText();
      }
      this.setStatus(`${W}×${H}`);
      this.layout();
      this.scheduleSelect(0);
    };
    img.onerror = () => {
      if (gen !== this.loadGen || this.disposed) return;
      this.setStatus(`cannot load image ${ref.filename}`, true);
    };
    img.src = viewUrl(ref, bust);
  }

  async upload(file) {
    const body = new FormData();
    body.append("image", file);
    body.append("type", "input");
    body.append("overwrite", "false");
    this.setStatus("uploading…");
    try {
      const res = await api.fetchApi("/upload/image", { method: "POST", body });
      if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
      const data = await res.json();
      if (this.disposed) return;
      const ref = { filename: data.name, subfolder: data.subfolder || "", type: data.type || "input" };
      const idx = this.node.inputs?.findIndex((i) => i.name === "image") ?? -1;
      const up = idx >= 0 && this.node.inputs[idx].link != null ? this.node.getInputNode?.(idx) : null;
      const combo = up?.widgets?.find((w) => w.name === "image" && Array.isArray(w.options?.values));
      if (combo) { // a connected Load Image: select the uploaded file there, so the backend uses it too
        const name = ref.subfolder ? `${ref.subfolder}/${ref.filename}` : ref.filename;
        if (!combo.options.values.includes(name)) combo.options.values.push(name);
        combo.value = name;
        combo.callback?.(name);
      } else {
        this.node.properties = this.node.properties || {};
        this.node.properties.p3s_image = ref;
      }
      this.tick();
    } catch (e) {
      this.setStatus(`upload failed: ${e.message || e}`, true);
    }
  }

  onExecuted(message) {
    const im = message?.images?.[0];
    if (!im?.filename) return;
    this.executedRef = { filename: im.filename, subfolder: im.subfolder || "", type: im.type || "temp" };
    this.tick();
  }

  // ---------- live selection preview ----------
  scheduleSelect(delay = DEBOUNCE_MS) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.select(), delay);
  }

  async select() {
    if (this.disposed) return;
    this.abort?.abort();
    const ref = this.imageRef;
    if (!ref || !this.image || this.points.positive.length === 0) {
      this.overlay = null;
      this.draw();
      return;
    }
    const ctrl = (this.abort = new AbortController());
    const pointsText = serializePoints(this.points);
    try {
      const res = await api.fetchApi("/p3s/select", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ image: ref, points: pointsText }),
        signal: ctrl.signal,
      });
      const data = await res.json().catch(() => ({ error: `P3S: preview failed (${res.status})` }));
      if (ctrl.signal.aborted || this.disposed) return;
      this.selectCount++;
      if (!res.ok) {
        this.lastSelect = { ok: false, error: data.error || String(res.status) };
        this.overlay = null;
        this.setStatus(this.lastSelect.error, true);
        this.draw();
        return;
      }
      const mask = new Image();
      mask.onload = () => {
        if (ctrl.signal.aborted || this.disposed) return;
        const c = document.createElement("canvas");
        c.width = mask.naturalWidth;
        c.height = mask.naturalHeight;
        const ctx = c.getContext("2d");
        ctx.drawImage(mask, 0, 0);
        const px = ctx.getImageData(0, 0, c.width, c.height);
        const d = px.data;
        for (let i = 0; i < d.length; i += 4) {
          const on = d[i] > 127;
          d[i] = OVERLAY_RGB[0]; d[i + 1] = OVERLAY_RGB[1]; d[i + 2] = OVERLAY_RGB[2];
          d[i + 3] = on ? 115 : 0;
        }
        ctx.putImageData(px, 0, 0);
        this.overlay = c;
        this.overlayFor = pointsText;
        this.lastSelect = { ok: true, area: data.area };
        this.setStatus(`${data.width}×${data.height} · selected ${(100 * data.area).toFixed(1)}%`);
        this.draw();
      };
      mask.src = data.mask;
    } catch (e) {
      if (e?.name === "AbortError" || this.disposed) return;
      this.lastSelect = { ok: false, error: String(e?.message || e) };
      this.setStatus(`preview failed: ${this.lastSelect.error}`, true);
    }
  }

  setStatus(text, error = false) {
    this.status.textContent = text;
    this.status.title = text;
    this.status.classList.toggle("p3s-error", !!error);
  }

  // ---------- drawing ----------
  draw() {
    const c = this.canvas, img = this.image;
    const ctx = c.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, c.width, c.height);
    this.overlayDrawn = false;
    if (!img || c.width < 2) return;
    ctx.drawImage(img, 0, 0, c.width, c.height);
    if (this.overlay && countPoints(this.points) && this.points.positive.length) {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(this.overlay, 0, 0, c.width, c.height);
      ctx.imageSmoothingEnabled = true;
      this.overlayDrawn = true;
    }
    const sx = c.width / img.naturalWidth, sy = c.height / img.naturalHeight;
    const unit = c.width / Math.max(1, parseFloat(c.style.width) || c.width); // device px per CSS px
    const r = 8 * unit;
    ctx.lineWidth = 2 * unit;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.font = `bold ${Math.round(10 * unit)}px sans-serif`;
    this.points.negative.forEach((p, i) => {
      const x = p.x * sx, y = p.y * sy;
      ctx.strokeStyle = "#000a";
      ctx.lineWidth = 4 * unit;
      ctx.beginPath(); ctx.arc(x, y, r, 0, Math.PI * 2); ctx.stroke();
      ctx.strokeStyle = NEG_COLOR;
      ctx.lineWidth = 2.5 * unit;
      ctx.beginPath(); ctx.arc(x, y, r, 0, Math.PI * 2); ctx.stroke();
      const k = r * 0.5;
      ctx.beginPath(); ctx.moveTo(x - k, y - k); ctx.lineTo(x + k, y + k); ctx.moveTo(x + k, y - k); ctx.lineTo(x - k, y + k); ctx.stroke();
      this.badge(ctx, x + r, y - r, `−${i + 1}`, NEG_COLOR, unit);
    });
    this.points.positive.forEach((p, i) => {
      const x = p.x * sx, y = p.y * sy;
      ctx.fillStyle = POS_COLOR;
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 2 * unit;
      ctx.beginPath(); ctx.arc(x, y, r, 0, Math.PI * 2); ctx.fill(); ctx.stroke();
      ctx.fillStyle = "#000";
      ctx.fillText(String(i + 1), x, y + 0.5 * unit);
    });
  }

  badge(ctx, x, y, text, color, unit) {
    ctx.save();
    ctx.font = `bold ${Math.round(9 * unit)}px sans-serif`;
    const w = ctx.measureText(text).width + 6 * unit, h = 12 * unit;
    ctx.fillStyle = color;
    ctx.fillRect(x - w / 2, y - h / 2, w, h);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x, y + 0.5 * unit);
    ctx.restore();
  }

  // ---------- pointer interaction ----------
  toImage(e) {
    const rect = this.canvas.getBoundingClientRect();
    const img = this.image;
    const sx = img.naturalWidth / rect.width, sy = img.naturalHeight / rect.height;
    const x = Math.min(img.naturalWidth, Math.max(0, (e.clientX - rect.left) * sx));
    const y = Math.min(img.naturalHeight, Math.max(0, (e.clientY - rect.top) * sy));
    return { x, y, scale: sx };
  }

  onDown(e) {
    // No preventDefault here: it would suppress the compatibility mouseup that the frontend's change
    // tracker listens to (undo history and the workflow persisted for page reloads).
    e.stopPropagation();
    if (!this.image || (e.button !== 0 && e.button !== 2)) return;
    const p = this.toImage(e);
    const hit = hitTest(this.points, p.x, p.y, HIT_PX * p.scale);
    this.canvas.setPointerCapture?.(e.pointerId);
    if (hit) {
      this.drag = { ...hit, x0: e.clientX, y0: e.clientY, moved: false, before: serializePoints(this.points) };
      return;
    }
    if (countPoints(this.points) >= MAX_POINTS) {
      this.setStatus(`at most ${MAX_POINTS} points`, true);
      return;
    }
    const kind = e.button === 2 || e.shiftKey ? "negative" : "positive";
    this.edit(() => {
      this.points.width = this.image.naturalWidth;
      this.points.height = this.image.naturalHeight;
      this.points[kind].push({ x: p.x, y: p.y });
    });
  }

  onMove(e) {
    const d = this.drag;
    if (!d) return;
    e.preventDefault();
    e.stopPropagation();
    if (!d.moved && Math.hypot(e.clientX - d.x0, e.clientY - d.y0) < DRAG_PX) return;
    d.moved = true;
    const p = this.toImage(e);
    const pt = this.points[d.kind][d.index];
    if (pt) { pt.x = p.x; pt.y = p.y; }
    this.draw();
  }

  onUp(e) {
    const d = this.drag;
    this.drag = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    if (!d) return;
    e.preventDefault();
    e.stopPropagation();
    this.undoStack.push(d.before);
    if (!d.moved) this.points[d.kind].splice(d.index, 1); // a click on a point deletes it
    this.writeText();
    this.draw();
    this.scheduleSelect();
  }

  // ---------- cleanup ----------
  dispose() {
    this.disposed = true;
    clearInterval(this.poll);
    clearTimeout(this.timer);
    this.abort?.abort();
    this.loadGen++;
    this.resizeObs?.disconnect();
    for (const [t, type, fn, opts] of this.listeners) t.removeEventListener(type, fn, opts);
    this.listeners = [];
    this.root.remove();
  }
}

app.registerExtension({
  name: "P3S.PointPicker",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      try {
        const picker = new PointPicker(this);
        this.p3sPicker = picker;
        const widget = this.addDOMWidget("p3s_point_canvas", "p3s_point_canvas", picker.root, {
          serialize: false,
          hideOnZoom: false,
          getValue: () => "",
          setValue: () => {},
          getMinHeight: () => 200,
        });
        widget.serialize = false; // not in widgets_values: saved workflows keep their widget order
        picker.domWidget = widget;
        picker.setTextHidden(true); // the "JSON" button shows it again
        const [w, h] = this.size;
        this.setSize([Math.max(w, 360), Math.max(h, 420)]);
      } catch (e) {
        console.error("P3S: Point Picker widget failed; the points text widget still works", e);
      }
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      this.p3sPicker?.onExecuted(message);
      return r;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.p3sPicker?.dispose();
      this.p3sPicker = null;
      return onRemoved?.apply(this, arguments);
    };

    const onResize = nodeType.prototype.onResize;
    nodeType.prototype.onResize = function () {
      const r = onResize?.apply(this, arguments);
      requestAnimationFrame(() => this.p3sPicker?.layout());
      return r;
    };
  },
});
