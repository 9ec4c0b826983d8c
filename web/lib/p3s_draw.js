// Drawing of the P3S Point Picker canvas: the image, the selection tint and the points (no side effects).

export const POS_COLOR = "#22c55e";
export const NEG_COLOR = "#ef4444";
const OVERLAY_RGB = [30, 144, 255];
const OVERLAY_ALPHA = 115;

/** A canvas with the selection tint from a grayscale mask image (255 = selected). */
export function tintFromMask(mask) {
  const c = document.createElement("canvas");
  c.width = mask.naturalWidth;
  c.height = mask.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(mask, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height);
  const d = px.data;
  for (let i = 0; i < d.length; i += 4) {
    const on = d[i] > 127;
    d[i] = OVERLAY_RGB[0];
    d[i + 1] = OVERLAY_RGB[1];
    d[i + 2] = OVERLAY_RGB[2];
    d[i + 3] = on ? OVERLAY_ALPHA : 0;
  }
  ctx.putImageData(px, 0, 0);
  return c;
}

function badge(ctx, x, y, text, color, unit) {
  ctx.save();
  ctx.font = `bold ${Math.round(9 * unit)}px sans-serif`;
  const w = ctx.measureText(text).width + 6 * unit, h = 12 * unit;
  ctx.fillStyle = color;
  ctx.fillRect(x - w / 2, y - h / 2, w, h);
  ctx.fillStyle = "#fff";
  ctx.fillText(text, x, y + 0.5 * unit);
  ctx.restore();
}

function drawNegative(ctx, x, y, r, unit, label) {
  ctx.strokeStyle = "#000a";
  ctx.lineWidth = 4 * unit;
  ctx.beginPath(); ctx.arc(x, y, r, 0, Math.PI * 2); ctx.stroke();
  ctx.strokeStyle = NEG_COLOR;
  ctx.lineWidth = 2.5 * unit;
  ctx.beginPath(); ctx.arc(x, y, r, 0, Math.PI * 2); ctx.stroke();
  const k = r * 0.5;
  ctx.beginPath(); ctx.moveTo(x - k, y - k); ctx.lineTo(x + k, y + k); ctx.moveTo(x + k, y - k); ctx.lineTo(x - k, y + k); ctx.stroke();
  badge(ctx, x + r, y - r, label, NEG_COLOR, unit);
}

function drawPositive(ctx, x, y, r, unit, label) {
  ctx.fillStyle = POS_COLOR;
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 2 * unit;
  ctx.beginPath(); ctx.arc(x, y, r, 0, Math.PI * 2); ctx.fill(); ctx.stroke();
  ctx.fillStyle = "#000";
  ctx.fillText(label, x, y + 0.5 * unit);
}

/**
 * Draw the image, the tint (if any) and the points (image pixels) on `canvas`, whose backing store may be
 * larger than its CSS size (device pixel ratio, canvas zoom). Returns whether the tint was drawn.
 */
export function drawPicker(canvas, image, tint, points) {
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!image || canvas.width < 2) return false;
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  let tinted = false;
  if (tint && points.positive.length) {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tint, 0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    tinted = true;
  }
  const sx = canvas.width / image.naturalWidth, sy = canvas.height / image.naturalHeight;
  const unit = canvas.width / Math.max(1, parseFloat(canvas.style.width) || canvas.width); // device px per CSS px
  const r = 8 * unit;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.font = `bold ${Math.round(10 * unit)}px sans-serif`;
  points.negative.forEach((p, i) => drawNegative(ctx, p.x * sx, p.y * sy, r, unit, `−${i + 1}`));
  points.positive.forEach((p, i) => drawPositive(ctx, p.x * sx, p.y * sy, r, unit, String(i + 1)));
  return tinted;
}
