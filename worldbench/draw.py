"""Drawing the world: backgrounds and the two subject classes, with numpy + Pillow only.

Every geometry is given as a fraction of the image side, so one scene renders the same at 64 px and at
128 px. Subjects are drawn at ``SUPERSAMPLE`` times the output side and box-filtered down (anti-aliasing);
the instance label map comes from the same supersampled canvas (the label covering most of a pixel).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

SUPERSAMPLE = 2

# Identity colours: saturated and far apart in hue/lightness, and unlike every background colour
# (no green body on the lawn, no white body in the snow, no black body at night).
BODY_COLOURS = {
    "red": (0.86, 0.14, 0.12),
    "orange": (0.99, 0.56, 0.08),
    "yellow": (0.98, 0.88, 0.10),
    "blue": (0.14, 0.34, 0.94),
    "purple": (0.56, 0.22, 0.80),
    "pink": (0.99, 0.50, 0.78),
}
COLLAR_COLOURS = {
    "green": (0.08, 0.72, 0.20),
    "cyan": (0.08, 0.86, 0.94),
    "white": (0.99, 0.99, 0.99),
    "black": (0.05, 0.05, 0.07),
}
PATTERN_SHADE = 0.38  # spots/stripes are the body colour times this
OUTLINE_SHADE = 0.45


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 2) -> np.ndarray:
    """Value noise in about -0.5..0.5 with features of ``cell`` pixels (bicubic-upsampled random grids)."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = max(1.0, cell / 2 ** o)
        gh, gw = int(h / c) + 3, int(w / c) + 3
        grid = (rng.random((gh, gw)) * 255).astype(np.uint8)
        big = Image.fromarray(grid).resize((int(gw * c), int(gh * c)), Image.BICUBIC)
        out += amp * (np.asarray(big, np.float32)[:h, :w] / 255.0 - 0.5)
        total += amp
        amp *= 0.5
    return out / total


def _mix(a, b, t):
    t = np.asarray(t, np.float32)[..., None]
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


def background(scene: str, side: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """An RGB float image [side, side, 3] of the scene and the horizon height (fraction of the side)."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    horizon = float(rng.uniform(0.34, 0.46))
    n1 = smooth_noise(rng, side, side, side / 6)
    n2 = smooth_noise(rng, side, side, side / 24)
    jitter = rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    top = yy < horizon + 0.01 * np.sin(xx * 11 + rng.uniform(0, 6))
    if scene == "lawn":
        sky = _mix((0.55, 0.75, 0.95), (0.75, 0.87, 0.97), yy / horizon)
        grass = np.stack([0.22 + 0.08 * n1, 0.55 + 0.10 * n1 + 0.10 * n2, 0.16 + 0.05 * n1], -1)
        grass *= (0.85 + 0.25 * (yy - horizon))[..., None]
        img = np.where(top[..., None], sky, grass)
    elif scene == "beach":
        sea_line = horizon + 0.12
        sky = _mix((0.50, 0.74, 0.97), (0.80, 0.90, 0.98), yy / horizon)
        sea = np.stack([0.10 + 0.04 * n2, 0.45 + 0.06 * n2, 0.70 + 0.06 * n1], -1) * np.ones_like(yy)[..., None]
        sand = np.stack([0.90 + 0.05 * n1, 0.80 + 0.05 * n1, 0.58 + 0.06 * n2], -1)
        img = np.where(top[..., None], sky, np.where((yy < sea_line)[..., None], sea, sand))
    elif scene == "snow":
        sky = _mix((0.70, 0.76, 0.84), (0.86, 0.89, 0.93), yy / horizon)
        snow = np.stack([0.90 + 0.05 * n1, 0.93 + 0.04 * n1, 0.98 + 0.02 * n2], -1)
        snow = snow - 0.10 * np.clip(n2, 0, None)[..., None] * np.array([1.0, 0.7, 0.2], np.float32)
        img = np.where(top[..., None], sky, snow)
    elif scene == "room":
        wall = np.stack([0.80 + 0.03 * n1, 0.82 + 0.03 * n1, 0.74 + 0.03 * n1], -1)
        planks = np.abs(np.sin((xx + 0.3 * yy) * np.pi * rng.uniform(5, 7))) > 0.96
        # a grey floor: brown wood would look like the dark shade of an orange coat
        wood = np.stack([0.52 + 0.06 * n2, 0.52 + 0.05 * n2, 0.55 + 0.05 * n2], -1)
        wood = wood * np.where(planks, 0.7, 1.0)[..., None]
        img = np.where(top[..., None], wall, wood)
        wx, wy = rng.uniform(0.15, 0.65), rng.uniform(0.06, 0.12)  # a window on the wall
        win = (xx > wx) & (xx < wx + 0.22) & (yy > wy) & (yy < wy + 0.18)
        frame = (xx > wx - 0.02) & (xx < wx + 0.24) & (yy > wy - 0.02) & (yy < wy + 0.20)
        img[frame] = (0.95, 0.95, 0.93)
        img[win] = _mix((0.50, 0.72, 0.95), (0.70, 0.85, 0.97), (yy[win] - wy) / 0.18)
    elif scene == "night":
        sky = _mix((0.03, 0.04, 0.16), (0.10, 0.12, 0.30), yy / horizon)
        ground = np.stack([0.10 + 0.03 * n1, 0.14 + 0.04 * n1, 0.22 + 0.04 * n2], -1)
        img = np.where(top[..., None], sky, ground)
        for _ in range(int(rng.integers(6, 12))):  # stars
            sx, sy = rng.uniform(0, 1), rng.uniform(0, horizon - 0.03)
            img[(np.abs(xx - sx) < 0.012) & (np.abs(yy - sy) < 0.012)] = (0.95, 0.95, 0.80)
        mx, my = rng.uniform(0.1, 0.9), rng.uniform(0.08, max(0.1, horizon - 0.14))
        img[(xx - mx) ** 2 + (yy - my) ** 2 < 0.07 ** 2] = (0.98, 0.94, 0.70)
    else:
        raise ValueError(f"unknown scene {scene!r}")
    img = np.asarray(img, np.float32) + jitter * np.ones(3, np.float32)
    return np.clip(img, 0, 1), horizon


class Painter:
    """Paints one subject onto a supersampled canvas, tracking its silhouette (for labels and the outline)."""

    def __init__(self, side: int, box: tuple[float, float, float, float]):
        self.side = side
        x0, y0, x1, y1 = (int(np.clip(v * side, 0, side)) for v in box)
        self.x0, self.y0 = x0, y0
        ys, xs = np.mgrid[y0:max(y0 + 1, y1), x0:max(x0 + 1, x1)].astype(np.float32)
        self.xx, self.yy = (xs + 0.5) / side, (ys + 0.5) / side
        self.rgb = np.zeros(self.xx.shape + (3,), np.float32)
        self.sil = np.zeros(self.xx.shape, bool)

    def ellipse(self, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = self.xx - cx, self.yy - cy
        u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
        return u * u + v * v

    def rect(self, cx, cy, hw, hh, angle=0.0) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = self.xx - cx, self.yy - cy
        return (np.abs(c * dx + s * dy) <= hw) & (np.abs(-s * dx + c * dy) <= hh)

    def fill(self, region: np.ndarray, colour, shade: np.ndarray | None = None) -> None:
        col = np.asarray(colour, np.float32)
        self.rgb[region] = col if shade is None else col * shade[region][:, None]
        self.sil |= region

    def paste(self, canvas: np.ndarray, labels: np.ndarray, label: int) -> None:
        """Silhouette outlined (a darker rim about one output pixel wide), then pasted over the canvas."""
        rim = self.sil & ~_erode(self.sil, SUPERSAMPLE)
        rgb = self.rgb.copy()
        rgb[rim] *= OUTLINE_SHADE
        h, w = self.sil.shape
        view = canvas[self.y0:self.y0 + h, self.x0:self.x0 + w]
        view[self.sil] = rgb[self.sil]
        labels[self.y0:self.y0 + h, self.x0:self.x0 + w][self.sil] = label


def _erode(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    for _ in range(r):
        e = out.copy()
        e[1:] &= out[:-1]
        e[:-1] &= out[1:]
        e[:, 1:] &= out[:, :-1]
        e[:, :-1] &= out[:, 1:]
        out = e
    return out


def _pattern(p: Painter, region: np.ndarray, kind: str, colour, centre, size: float, vertical: bool,
             rng: np.random.Generator) -> None:
    """Spots or stripes inside ``region`` (the body), in a darker shade of the body colour."""
    dark = np.asarray(colour, np.float32) * PATTERN_SHADE
    if kind == "spots":
        # big round spots on a jittered 3 x 2 grid (readable at 64 px, never merging into stripes)
        spots = np.zeros_like(region)
        for gx, gy in ((-0.55, -0.3), (0.0, -0.35), (0.55, -0.3), (-0.3, 0.35), (0.3, 0.35)):
            if rng.random() < 0.85:
                sx = centre[0] + (gx + rng.uniform(-0.1, 0.1)) * size
                sy = centre[1] + (gy + rng.uniform(-0.08, 0.08)) * size * (0.55 if vertical else 1.0)
                spots |= p.ellipse(sx, sy, 0.15 * size, 0.15 * size) <= 1
        p.rgb[region & spots] = dark
    elif kind == "stripes":
        coord = p.xx if vertical else p.yy
        period = 0.42 * size
        phase = rng.uniform(0, period)
        bands = ((coord - centre[0 if vertical else 1] + phase) % period) < 0.5 * period
        p.rgb[region & bands] = dark


def dog(p: Painter, cx: float, ground: float, size: float, facing: float, pose: np.ndarray, colour,
        pattern: str, collar, rng: np.random.Generator) -> None:
    """A side-view dog; ``size`` = body length (fraction of the side), ``facing`` +1 right / -1 left."""
    f, L = facing, size
    body_c = np.asarray(colour, np.float32)
    far = body_c * 0.78
    leg_h, body_y = 0.26 * L, ground - 0.36 * L
    spread = 0.03 * L * pose[0]
    for dx, col in ((-0.27, far), (0.20, far), (-0.18, body_c), (0.29, body_c)):
        x = cx + (dx * L + spread * np.sign(dx)) * f
        p.fill(p.rect(x, ground - leg_h / 2, 0.055 * L, leg_h / 2), col)
    tail_a = (0.5 + 0.4 * pose[1]) * f
    p.fill(p.ellipse(cx - 0.40 * L * f, body_y - 0.13 * L, 0.05 * L, 0.17 * L, angle=tail_a) <= 1, far)
    body = p.ellipse(cx, body_y, 0.40 * L, 0.21 * L) <= 1
    shade = 1.05 - 0.25 * np.clip((p.yy - (body_y - 0.2 * L)) / (0.4 * L), 0, 1)
    p.fill(body, body_c, shade)
    _pattern(p, body, pattern, body_c, (cx, body_y), 0.40 * L, True, rng)
    hx, hy = cx + 0.42 * L * f, body_y - 0.27 * L + 0.04 * L * pose[2]
    p.fill(p.ellipse(hx, hy, 0.19 * L, 0.18 * L) <= 1, body_c)
    p.fill(p.ellipse(hx + 0.18 * L * f, hy + 0.06 * L, 0.11 * L, 0.075 * L) <= 1, np.clip(body_c * 1.1 + 0.1, 0, 1))
    p.fill(p.ellipse(hx + 0.28 * L * f, hy + 0.03 * L, 0.035 * L, 0.035 * L) <= 1, (0.08, 0.06, 0.06))
    p.fill(p.ellipse(hx - 0.06 * L * f, hy + 0.06 * L, 0.06 * L, 0.15 * L, angle=0.3 * f) <= 1, body_c * 0.6)
    p.fill(p.ellipse(hx + 0.06 * L * f, hy - 0.05 * L, 0.03 * L, 0.03 * L) <= 1, (0.05, 0.04, 0.04))
    # the collar over the neck, thick enough to survive an 8x latent: a band plus a round tag
    p.fill(p.rect(cx + 0.30 * L * f, body_y - 0.11 * L, 0.07 * L, 0.16 * L, angle=0.55 * f), collar)
    p.fill(p.ellipse(cx + 0.36 * L * f, body_y + 0.03 * L, 0.07 * L, 0.07 * L) <= 1, collar)


def bird(p: Painter, cx: float, ground: float, size: float, facing: float, pose: np.ndarray, colour,
         pattern: str, collar, rng: np.random.Generator) -> None:
    """An upright side-view bird; ``size`` = height (fraction of the side)."""
    f, L = facing, size
    body_c = np.asarray(colour, np.float32)
    leg_c = (0.30, 0.24, 0.18)
    for dx in (-0.07, 0.06):
        p.fill(p.rect(cx + dx * L * f, ground - 0.08 * L, 0.022 * L, 0.08 * L), leg_c)
    by = ground - 0.42 * L
    p.fill(p.ellipse(cx - 0.28 * L * f, by + 0.16 * L, 0.07 * L, 0.17 * L, angle=(0.9 + 0.3 * pose[1]) * f) <= 1,
           body_c * 0.7)
    body = p.ellipse(cx, by, 0.28 * L, 0.30 * L, angle=0.25 * f) <= 1
    shade = 1.05 - 0.25 * np.clip((p.yy - (by - 0.3 * L)) / (0.6 * L), 0, 1)
    p.fill(body, body_c, shade)
    _pattern(p, body, pattern, body_c, (cx, by), 0.30 * L, False, rng)
    p.fill(p.ellipse(cx - 0.05 * L * f, by + 0.02 * L, 0.17 * L, 0.10 * L,
                     angle=(-0.35 + 0.25 * pose[0]) * f) <= 1, body_c * 0.68)
    hx, hy = cx + 0.10 * L * f, by - 0.43 * L + 0.03 * L * pose[2]
    p.fill(p.ellipse(hx, hy, 0.17 * L, 0.16 * L) <= 1, body_c)
    beak = p.ellipse(hx + 0.22 * L * f, hy + 0.02 * L, 0.09 * L, 0.04 * L) <= 1
    p.fill(beak, (0.22, 0.20, 0.18))
    p.fill(p.ellipse(hx + 0.06 * L * f, hy - 0.03 * L, 0.032 * L, 0.032 * L) <= 1, (0.04, 0.04, 0.05))
    # the collar (a neck ring) between head and body, over both
    p.fill(p.rect(cx + 0.07 * L * f, by - 0.26 * L, 0.17 * L, 0.07 * L, angle=-0.15 * f), collar)


def subject_box(cls: str, cx: float, ground: float, size: float, facing: float) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) in side fractions that contains everything ``dog``/``bird`` paint."""
    if cls == "dog":
        back, front, up = 0.52 * size, 0.72 * size, 0.90 * size
    else:
        back, front, up = 0.45 * size, 0.45 * size, 1.0 * size
    x0, x1 = (cx - back, cx + front) if facing > 0 else (cx - front, cx + back)
    return x0, ground - up, x1, ground + 0.01


def box_width(cls: str) -> float:
    """Width of a subject's box in units of its size."""
    x0, _, x1, _ = subject_box(cls, 0.0, 0.0, 1.0, 1.0)
    return x1 - x0


PAINTERS = {"dog": dog, "bird": bird}


def downsample(canvas: np.ndarray, labels: np.ndarray, n: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-filter the supersampled canvas; each pixel's label is the one covering most of it."""
    s = canvas.shape[0] // factor
    img = canvas.reshape(s, factor, s, factor, 3).mean((1, 3))
    onehot = np.eye(n + 1, dtype=np.float32)[labels].reshape(s, factor, s, factor, n + 1).mean((1, 3))
    # ties go to the subject drawn last (in front)
    onehot += np.linspace(0, 1e-3, n + 1, dtype=np.float32)
    return img, onehot.argmax(-1).astype(np.uint8)
