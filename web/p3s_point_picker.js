// P3S Point Picker: a click-to-select canvas on the P3SPointPicker node.
// The node's `points` STRING widget stays the single source of truth (JSON in image pixels); this widget only
// edits it, and only when the user edits: loading a workflow never rewrites the stored text. If this file fails
// to load, the node still works from that text widget.
// Works on the legacy canvas and in Vue nodes mode, on the pinned and the newest frontend: everything that
// differs between them goes through ./lib/p3s_frontend.js. No timers poll: the widget follows the frontend's
// events (connection changes, the upstream Load Image's widget callback, the points widget's callback, execution).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  MAX_POINTS, countPoints, emptyPoints, fitRect, hitTest, parseImageRef, parsePoints, refFromViewUrl, refKey,
  rescalePoints, serializePoints,
} from "./lib/p3s_points.js";
import { drawPicker, tintFromMask } from "./lib/p3s_draw.js";
import { buildLegend, el, ensureStyle } from "./lib/p3s_dom.js";
import {
  adoptParkedElement, hideWidget, notifyGraphChanged, onWidgetChange, parkElement, upstreamNode,
} from "./lib/p3s_frontend.js";

const NODE_ID = "P3SPointPicker";
const DEBOUNCE_MS = 250;
const HIT_PX = 12; // hit radius on screen (CSS px) for selecting a point
const DRAG_PX = 4; // movement before a press on a point becomes a drag
const UI_IMAGE_KEY = "p3s_image"; // the node's UI output: the reference image of the last run (nodes/picker.py)

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
    this.wantedKey = "";
    this.executedRef = null;
    this.overlay = null; // canvas with the selection tint
    this.overlayFor = "";
    this.overlayDrawn = false;
    this.selectCount = 0; // answered /p3s/select calls (tests read it)
    this.lastSelect = null; // {ok, area | error}
    this.drag = null;
    this.abort = null;
    this.timer = null;
    this.loadGen = 0;
    this.home = null; // {graph, id} once the node is in a graph
    this.upstream = { widget: null, node: null, off: null };
    this.disposed = false;
    this.build();
    this.offText = this.textWidget ? onWidgetChange(this.textWidget, () => this.syncFromText(false)) : null;
    // Any other widget of the node (a selection option) re-runs the live preview, which receives its value.
    this.offOptions = (node.widgets || []).filter((w) => w !== this.textWidget)
      .map((w) => onWidgetChange(w, () => this.scheduleSelect()));
    this.syncFromText(true);
  }

  // ---------- DOM ----------
  build() {
    ensureStyle();
    // "widget-expands": the frontend's class for a widget that fills the node (Vue nodes mode grows its row).
    const root = (this.root = el("div", "p3s-picker widget-expands"));
    const bar = el("div", "p3s-picker-bar");
    const undo = el("button", null, "Undo");
    undo.title = "Undo the last edit";
    const clear = el("button", null, "Clear");
    clear.title = "Remove all points";
    const json = (this.jsonButton = el("button", null, "JSON"));
    json.title = "Show/hide the points as text (you can type or paste JSON there)";
    this.status = el("span", "p3s-picker-status", "");
    bar.append(undo, clear, json, this.status);
    this.editor = el("textarea", "p3s-picker-json");
    this.editor.spellcheck = false;
    this.editor.style.display = "none";
    const wrap = (this.wrap = el("div", "p3s-picker-wrap"));
    const canvas = (this.canvas = el("canvas", "p3s-picker-canvas"));
    this.hint = el("div", "p3s-picker-hint",
      "Connect a Load Image, or drop an image here.\nThen left click the subject (right or shift click excludes).");
    wrap.append(canvas, this.hint);
    this.legend = buildLegend();
    this.legend.style.display = "none";
    root.append(bar, this.editor, wrap, this.legend);

    this.listeners = [];
    const on = (target, type, fn, opts) => {
      target.addEventListener(type, fn, opts);
      this.listeners.push([target, type, fn, opts]);
    };
    on(undo, "click", (e) => { e.stopPropagation(); this.undo(); });
    on(clear, "click", (e) => { e.stopPropagation(); this.edit(() => { this.points.positive = []; this.points.negative = []; }); });
    on(json, "click", (e) => { e.stopPropagation(); this.toggleEditor(); });
    on(this.editor, "input", () => this.setTextFromEditor(false));
    on(this.editor, "change", () => this.setTextFromEditor(true));
    on(this.editor, "keydown", (e) => e.stopPropagation()); // typing is not a canvas shortcut
    on(canvas, "pointerdown", (e) => this.onDown(e));
    on(canvas, "pointermove", (e) => this.onMove(e));
    on(canvas, "pointerup", (e) => this.onUp(e));
    on(canvas, "pointercancel", () => { this.drag = null; });
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

  toggleEditor() {
    const show = this.editor.style.display === "none";
    this.editor.style.display = show ? "" : "none";
    this.jsonButton.classList.toggle("p3s-on", show);
    if (show) this.editor.value = this.textValue();
  }

  /** Typing in the JSON box edits the points text; the change tracker hears of it when the edit is committed. */
  setTextFromEditor(commit) {
    const w = this.textWidget;
    if (!w) return;
    const text = this.editor.value;
    if (text !== this.textValue()) {
      w.value = text;
      w.callback?.(text); // our listener re-reads the points
    }
    if (commit) notifyGraphChanged(app);
  }

  layout() {
    if (this.disposed) return;
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
    this.legend.style.display = img ? "" : "none";
    this.draw();
  }

  // ---------- graph membership ----------
  /** The node joined a graph (created, pasted, or rebuilt by undo/redo/load): follow its id and inputs. */
  attach(graph) {
    if (this.disposed || !graph) return;
    this.home = { graph, id: this.node.id };
    this.canvas.dataset.p3sNode = String(this.node.id);
    adoptParkedElement(graph, this.node.id, this.root, !!globalThis.LiteGraph?.vueNodesMode);
    this.scheduleRefresh();
  }

  /** Re-read everything the widget shows, once, after the current task (a whole graph configures in one task). */
  scheduleRefresh() {
    if (this.refreshQueued || this.disposed) return;
    this.refreshQueued = true;
    queueMicrotask(() => {
      this.refreshQueued = false;
      this.refresh();
    });
  }

  refresh() {
    if (this.disposed) return;
    if (this.node.id != null) this.canvas.dataset.p3sNode = String(this.node.id);
    this.watchUpstream();
    this.syncFromText(false);
    const ref = this.currentRef();
    const key = refKey(ref);
    if (key !== this.wantedKey) {
      this.wantedKey = key;
      this.loadImage(ref);
    }
  }

  /** Listen to the connected Load Image's `image` widget (its callback fires when the user picks a file). */
  watchUpstream() {
    const up = upstreamNode(this.node, "image");
    const widget = up?.widgets?.find((w) => w.name === "image" && typeof w.value === "string") || null;
    if (widget === this.upstream.widget && up === this.upstream.node) return;
    this.upstream.off?.();
    this.upstream = { node: up, widget, off: widget ? onWidgetChange(widget, () => this.scheduleRefresh()) : null };
  }

  // ---------- points text <-> state ----------
  textValue() {
    return this.textWidget ? String(this.textWidget.value ?? "") : "";
  }

  /** The parsed points in the displayed image's pixels (in memory only: the text is not rewritten). */
  fitToImage(parsed) {
    const img = this.image;
    if (!img) return parsed;
    const W = img.naturalWidth, H = img.naturalHeight;
    if (parsed.width === 0) return { ...parsed, width: W, height: H }; // KJNodes list: already image pixels
    return rescalePoints(parsed, W, H);
  }

  syncFromText(force) {
    const text = this.textValue();
    if (!force && text === this.lastText) return;
    this.lastText = text;
    if (this.editor.style.display !== "none" && document.activeElement !== this.editor) this.editor.value = text;
    const parsed = parsePoints(text);
    if (!parsed) { this.setStatus("points text is not valid JSON (fix it or click Clear)", true); return; }
    this.points = this.fitToImage(parsed);
    this.draw();
    this.scheduleSelect();
  }

  /** Store the edited points in the text widget and tell the frontend (undo history, modified flag, drafts). */
  writeText() {
    const text = serializePoints(this.points);
    this.lastText = text;
    if (this.textWidget) {
      this.textWidget.value = text;
      this.textWidget.callback?.(text);
    }
    if (this.editor.style.display !== "none") this.editor.value = text;
    this.node.setDirtyCanvas?.(true, false);
    notifyGraphChanged(app);
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
    const { node: up, widget } = this.upstream;
    if (widget) return parseImageRef(widget.value, "input");
    const src = up?.imgs?.[0]?.src;
    return src ? refFromViewUrl(src) : null;
  }

  currentRef() {
    return this.upstreamRef() || this.node.properties?.p3s_image || this.executedRef || null;
  }

  loadImage(ref, bust) {
    const gen = ++this.loadGen;
    if (!ref) {
      this.image = null;
      this.imageRef = null;
      this.overlay = null;
      this.layout();
      return;
    }
    const img = new Image();
    img.onload = () => {
      if (gen !== this.loadGen || this.disposed) return;
      this.image = img;
      this.imageRef = ref;
      this.overlay = null;
      this.setStatus(`${img.naturalWidth}×${img.naturalHeight}`);
      this.syncFromText(true); // the stored points, shown in this image's pixels
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
      this.watchUpstream();
      const combo = this.upstream.widget;
      if (combo && Array.isArray(combo.options?.values)) {
        // a connected Load Image: select the uploaded file there, so the backend uses it too
        const name = ref.subfolder ? `${ref.subfolder}/${ref.filename}` : ref.filename;
        if (!combo.options.values.includes(name)) combo.options.values.push(name);
        combo.value = name;
        combo.callback?.(name);
      } else {
        this.node.properties = this.node.properties || {};
        this.node.properties.p3s_image = ref;
      }
      notifyGraphChanged(app);
      this.refresh();
    } catch (e) {
      this.setStatus(`upload failed: ${e.message || e}`, true);
    }
  }

  onExecuted(message) {
    const im = message?.[UI_IMAGE_KEY]?.[0];
    if (!im?.filename) return;
    this.executedRef = { filename: im.filename, subfolder: im.subfolder || "", type: im.type || "temp" };
    this.refresh();
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
    const storedText = this.lastText;
    try {
      const res = await api.fetchApi("/p3s/select", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ image: ref, points: pointsText, options: this.selectOptions() }),
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
        this.overlay = tintFromMask(mask);
        this.overlayFor = storedText; // the stored text this tint shows
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

  /** The node's other widget values ({name: value}), for /p3s/select options that mirror node inputs. */
  selectOptions() {
    const options = {};
    for (const w of this.node.widgets || []) {
      if (w === this.textWidget || w === this.domWidget || !w.name) continue;
      if (["boolean", "number", "string"].includes(typeof w.value)) options[w.name] = w.value;
    }
    return options;
  }

  setStatus(text, error = false) {
    this.status.textContent = text;
    this.status.title = text;
    this.status.classList.toggle("p3s-error", !!error);
  }

  draw() {
    this.overlayDrawn = drawPicker(this.canvas, this.image, this.overlay, this.points);
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
  /**
   * The node left its graph. The element stays where the frontend mounted it (the frontend removes it with the
   * node's view) but is emptied; a node with the same id created by the same graph rebuild takes its place.
   */
  dispose() {
    this.disposed = true;
    clearTimeout(this.timer);
    this.abort?.abort();
    this.loadGen++;
    this.offText?.();
    for (const off of this.offOptions) off();
    this.upstream.off?.();
    this.upstream = { widget: null, node: null, off: null };
    this.resizeObs?.disconnect();
    for (const [t, type, fn, opts] of this.listeners) t.removeEventListener(type, fn, opts);
    this.listeners = [];
    this.root.replaceChildren();
    if (this.home) parkElement(this.home.graph, this.home.id, this.root);
  }
}

app.registerExtension({
  name: "P3S.PointPicker",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;
    const chain = (name, after) => {
      const before = nodeType.prototype[name];
      nodeType.prototype[name] = function () {
        const r = before?.apply(this, arguments);
        after.apply(this, arguments);
        return r;
      };
    };

    chain("onNodeCreated", function () {
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
        if (picker.textWidget) hideWidget(this, picker.textWidget); // the JSON button edits it in the widget
        const [w, h] = this.size;
        this.setSize([Math.max(w, 360), Math.max(h, 440)]);
      } catch (e) {
        console.error("P3S: Point Picker widget failed; the points text widget still works", e);
      }
    });
    chain("onAdded", function (graph) { this.p3sPicker?.attach(graph || this.graph); });
    chain("onConfigure", function () {
      this.p3sPicker?.syncFromText(true);
      this.p3sPicker?.scheduleRefresh();
    });
    chain("onConnectionsChange", function () { this.p3sPicker?.scheduleRefresh(); });
    chain("onExecuted", function (message) { this.p3sPicker?.onExecuted(message); });
    chain("onResize", function () { requestAnimationFrame(() => this.p3sPicker?.layout()); });

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.p3sPicker?.dispose();
      return onRemoved?.apply(this, arguments);
    };
  },
});
