// The Point Picker's DOM pieces: its style sheet, elements and the legend of the clicks (no side effects).
import { NEG_COLOR, POS_COLOR } from "./p3s_draw.js";

const STYLE = `
.p3s-picker{display:flex;flex-direction:column;gap:4px;width:100%;height:100%;box-sizing:border-box;
  font:12px sans-serif;color:#ddd;user-select:none}
.p3s-picker-bar{display:flex;gap:4px;align-items:center;flex:0 0 auto}
.p3s-picker-bar button{background:#333;color:#eee;border:1px solid #555;border-radius:4px;padding:1px 8px;
  cursor:pointer;font:12px sans-serif}
.p3s-picker-bar button:hover{background:#444}
.p3s-picker-bar button.p3s-on{background:#2b4a6b}
.p3s-picker-status{flex:1;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;opacity:.85}
.p3s-picker-status.p3s-error{color:#f87171;opacity:1}
.p3s-picker-json{flex:0 0 64px;resize:none;box-sizing:border-box;width:100%;font:11px monospace;color:#ddd;
  background:#111;border:1px solid #555;border-radius:4px;padding:3px;user-select:text}
.p3s-picker-wrap{position:relative;flex:1 1 auto;min-height:60px;background:#1118;border-radius:4px;overflow:hidden}
.p3s-picker-wrap.p3s-drop{outline:2px dashed #22c55e}
.p3s-picker-canvas{position:absolute;cursor:crosshair;touch-action:none}
.p3s-picker-hint{position:absolute;inset:0;display:flex;align-items:center;justify-content:center;
  text-align:center;padding:8px;opacity:.6;pointer-events:none;white-space:pre-line}
.p3s-picker-legend{display:flex;flex-wrap:wrap;gap:1px 10px;flex:0 0 auto;font-size:11px;opacity:.8;line-height:14px}
.p3s-picker-legend b{font-weight:bold}
`;

const LEGEND = [
  ["●", POS_COLOR, "left click: subject"],
  ["✕", NEG_COLOR, "right / shift click: exclude"],
  ["", null, "click a point: delete"],
  ["", null, "drag a point: move"],
];

export function ensureStyle() {
  if (document.getElementById("p3s-picker-style")) return;
  const sheet = document.createElement("style");
  sheet.id = "p3s-picker-style";
  sheet.textContent = STYLE;
  document.head.appendChild(sheet);
}

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

export function buildLegend() {
  const legend = el("div", "p3s-picker-legend");
  for (const [mark, color, text] of LEGEND) {
    const item = el("span");
    if (mark) {
      const b = el("b", null, mark + " ");
      b.style.color = color;
      item.append(b);
    }
    item.append(text);
    legend.append(item);
  }
  return legend;
}

