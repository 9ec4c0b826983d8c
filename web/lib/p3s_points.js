// Pure helpers of the P3S Point Picker widget (no side effects: the frontend imports every .js under web/).
// Points live in IMAGE PIXELS with the image size: {"width": W, "height": H, "positive": [{x,y}], "negative": [...]}.

export const MAX_POINTS = 64;

const round1 = (v) => Math.round(v * 10) / 10;

export function emptyPoints(width = 0, height = 0) {
  return { width, height, positive: [], negative: [] };
}

function toPoint(p) {
  if (Array.isArray(p) && p.length >= 2) return { x: Number(p[0]), y: Number(p[1]) };
  if (p && typeof p === "object") return { x: Number(p.x), y: Number(p.y) };
  return null;
}

function toList(v) {
  if (!Array.isArray(v)) return [];
  return v.map(toPoint).filter((p) => p && Number.isFinite(p.x) && Number.isFinite(p.y));
}

/** Parse the widget text (our format or the KJNodes list). Returns null when it is not valid JSON. */
export function parsePoints(text) {
  if (text == null || String(text).trim() === "") return emptyPoints();
  let data;
  try {
    data = JSON.parse(String(text));
  } catch {
    return null;
  }
  if (Array.isArray(data)) return { width: 0, height: 0, positive: toList(data), negative: [] };
  if (!data || typeof data !== "object") return null;
  return {
    width: Number(data.width) || 0,
    height: Number(data.height) || 0,
    positive: toList(data.positive),
    negative: toList(data.negative),
  };
}

export function serializePoints(s) {
  const fix = (l) => l.map((p) => ({ x: round1(p.x), y: round1(p.y) }));
  return JSON.stringify({ width: s.width, height: s.height, positive: fix(s.positive), negative: fix(s.negative) });
}

export function clonePoints(s) {
  return { width: s.width, height: s.height, positive: s.positive.map((p) => ({ ...p })),
    negative: s.negative.map((p) => ({ ...p })) };
}

export function countPoints(s) {
  return s.positive.length + s.negative.length;
}

/** The same points on a width x height image (proportional), with the new size recorded. */
export function rescalePoints(s, width, height) {
  if (!s.width || !s.height || (s.width === width && s.height === height)) {
    return { ...clonePoints(s), width, height };
  }
  const sx = width / s.width, sy = height / s.height;
  const f = (l) => l.map((p) => ({ x: p.x * sx, y: p.y * sy }));
  return { width, height, positive: f(s.positive), negative: f(s.negative) };
}

/** Nearest point within `radius` image pixels: {kind: "positive"|"negative", index} or null. */
export function hitTest(s, x, y, radius) {
  let best = null, bestD = radius * radius;
  for (const kind of ["positive", "negative"]) {
    s[kind].forEach((p, index) => {
      const d = (p.x - x) ** 2 + (p.y - y) ** 2;
      if (d <= bestD) { bestD = d; best = { kind, index }; }
    });
  }
  return best;
}

/** Largest rect with the image's aspect ratio inside a box (CSS pixels). */
export function fitRect(boxW, boxH, imgW, imgH) {
  if (!(boxW > 0 && boxH > 0 && imgW > 0 && imgH > 0)) return { x: 0, y: 0, w: 0, h: 0 };
  const s = Math.min(boxW / imgW, boxH / imgH);
  const w = Math.max(1, Math.floor(imgW * s)), h = Math.max(1, Math.floor(imgH * s));
  return { x: Math.floor((boxW - w) / 2), y: Math.floor((boxH - h) / 2), w, h };
}

/** "sub/dir/name.png [input]" (a LoadImage combo value) -> {filename, subfolder, type}. */
export function parseImageRef(value, defaultType = "input") {
  if (typeof value !== "string" || !value.trim()) return null;
  let v = value.trim(), type = defaultType;
  const m = v.match(/^(.*?)\s*\[(input|output|temp)\]$/);
  if (m) { v = m[1]; type = m[2]; }
  const i = v.lastIndexOf("/");
  return { filename: i >= 0 ? v.slice(i + 1) : v, subfolder: i >= 0 ? v.slice(0, i) : "", type };
}

/** {filename, subfolder, type} from a "/view?..." URL (an upstream node's preview), or null. */
export function refFromViewUrl(src) {
  try {
    const u = new URL(src, "http://x/");
    if (!/\/view$/.test(u.pathname)) return null;
    const filename = u.searchParams.get("filename");
    if (!filename) return null;
    return { filename, subfolder: u.searchParams.get("subfolder") || "", type: u.searchParams.get("type") || "input" };
  } catch {
    return null;
  }
}

export function refKey(ref) {
  return ref ? `${ref.type}|${ref.subfolder}|${ref.filename}` : "";
}
