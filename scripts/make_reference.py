"""Makes the shipped reference image assets/two_dogs.png (and its ground-truth masks) procedurally.

Two similar cartoon dogs (same breed look, slightly different pose and coat tint) sitting on a
textured, shaded lawn in front of a hedge. Everything is drawn here with numpy + Pillow, so the
project may ship the picture (MIT, like the code). Deterministic for a given --seed.

    python scripts/make_reference.py                 # writes assets/two_dogs.png + assets/two_dogs_masks.png
    python scripts/make_reference.py --out DIR
    python scripts/make_reference.py --thumbnails    # example_workflows/*.jpg (needs torch: the host's python)

assets/two_dogs_masks.png is a label image: 0 = background, 1 = left dog, 2 = right dog (values x 100
so it is visible: 0 / 100 / 200). The example workflows' points sit on the left dog.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

W, H = 512, 384
REPO = Path(__file__).resolve().parents[1]

# Points the example workflows use (pixels of the 512x384 image): three on the left dog, one negative on
# the right. With the built-in features they select the left dog (IoU ~0.88) and none of the right one.
LEFT_DOG_POINTS = [(150, 230), (100, 240), (160, 150)]
RIGHT_DOG_POINT = (372, 232)


def _smooth_noise(rng, h, w, scale, octaves=3):
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        s = max(2, int(scale / (2 ** o)))
        small = rng.random((h // s + 2, w // s + 2)).astype(np.float32)
        img = Image.fromarray((small * 255).astype(np.uint8)).resize((w + 2 * s, h + 2 * s), Image.BICUBIC)
        out += amp * (np.asarray(img, np.float32)[s:s + h, s:s + w] / 255.0 - 0.5)
        total += amp
        amp *= 0.5
    return out / total


def _ellipse(xx, yy, cx, cy, rx, ry, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xx - cx, yy - cy
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    return u * u + v * v  # <= 1 inside


def _shade(d, light=0.35):
    """Pseudo-3D shading of an ellipse from its normalised radius d (0 centre .. 1 edge)."""
    z = np.sqrt(np.clip(1.0 - d, 0.0, 1.0))
    return (1.0 - light) + light * z


def _background(rng, xx, yy):
    horizon = H * 0.42
    # Hedge at the back: dark green, leafy noise, a soft top edge.
    leaf = _smooth_noise(rng, H, W, 10, 4)
    hedge = np.stack([0.16 + 0.10 * leaf, 0.30 + 0.16 * leaf, 0.13 + 0.07 * leaf], -1)
    sky = np.stack([0.62 + 0.12 * yy / H, 0.76 + 0.08 * yy / H, 0.92 + 0.0 * yy], -1)
    top = 60 + 10 * np.sin(xx / 37.0) + 6 * _smooth_noise(rng, H, W, 20, 2)
    img = np.where((yy < top)[..., None], sky, hedge)
    # Lawn: lighter at the back, grass blades as streaky vertical noise, a few flowers.
    t = np.clip((yy - horizon) / (H - horizon), 0, 1)
    streak = _smooth_noise(rng, H, W, 3, 2)
    blades = np.asarray(Image.fromarray(((streak + 0.5) * 255).clip(0, 255).astype(np.uint8))
                        .filter(ImageFilter.GaussianBlur((0.3, 0))).resize((W, H)), np.float32) / 255 - 0.5
    big = _smooth_noise(rng, H, W, 48, 2)
    g = 0.52 - 0.12 * t + 0.10 * big + 0.12 * blades
    lawn = np.stack([0.30 * g + 0.05, g, 0.18 * g + 0.03], -1)
    edge = horizon + 4 * np.sin(xx / 23.0)
    img = np.where((yy >= edge)[..., None], lawn, img)
    for _ in range(40):
        fx, fy = rng.uniform(0, W), rng.uniform(horizon + 10, H)
        r = 1.5 + 2.0 * (fy - horizon) / (H - horizon)
        m = (xx - fx) ** 2 + (yy - fy) ** 2 <= r * r
        img[m] = [0.96, 0.94, 0.80] if rng.random() < 0.7 else [0.95, 0.80, 0.25]
    return img


def _dog(img, labels, label, xx, yy, cx, cy, rng, coat, flip=1.0, tilt=0.0):
    """Draws one sitting cartoon dog with its centre of body at (cx, cy); flip=-1 faces left."""
    fur = _smooth_noise(rng, H, W, 4, 2)
    coat = np.asarray(coat, np.float32)
    dark = coat * 0.55
    belly = np.clip(coat * 1.25 + 0.08, 0, 1)
    mask = np.zeros((H, W), bool)

    def paint(d, colour, light=0.35, furry=0.08):
        inside = d <= 1.0
        col = np.asarray(colour, np.float32)[None] * _shade(d[inside], light)[:, None]
        col = col + furry * fur[inside][:, None]
        img[inside] = np.clip(col, 0, 1)
        mask[inside] = True

    # Shadow on the grass.
    sh = _ellipse(xx, yy, cx + 6 * flip, cy + 78, 72, 14)
    img[sh <= 1] *= (0.55 + 0.45 * np.clip(sh[sh <= 1], 0, 1))[:, None]
    # Tail, back legs, body, chest, front legs, head, ears, snout.
    paint(_ellipse(xx, yy, cx - 58 * flip, cy + 20, 30, 9, angle=-0.9 * flip), dark)
    paint(_ellipse(xx, yy, cx - 30 * flip, cy + 50, 32, 26), coat * 0.9)
    paint(_ellipse(xx, yy, cx - 8 * flip, cy + 18, 50, 58, angle=0.25 * flip), coat)
    paint(_ellipse(xx, yy, cx + 18 * flip, cy + 20, 20, 34), belly, light=0.2)
    for dx in (8, 30):
        paint(_ellipse(xx, yy, cx + dx * flip, cy + 64, 9, 22), coat * 0.95)
        paint(_ellipse(xx, yy, cx + (dx + 3) * flip, cy + 84, 12, 6), belly, light=0.15)
    hx, hy = cx + 20 * flip, cy - 52 + tilt
    paint(_ellipse(xx, yy, hx - 26 * flip, hy + 6, 12, 30, angle=0.35 * flip), dark)  # far ear
    paint(_ellipse(xx, yy, hx, hy, 34, 31), coat)
    paint(_ellipse(xx, yy, hx + 24 * flip, hy + 12, 22, 15), belly, light=0.2)
    paint(_ellipse(xx, yy, hx + 22 * flip, hy - 4, 11, 28, angle=-0.5 * flip), dark)  # near ear, floppy
    # Face details (inside the silhouette): nose, eyes with highlights, mouth line.
    for (ex, ey, r, colour) in ((hx + 40 * flip, hy + 6, 6.5, (0.08, 0.06, 0.06)),
                                (hx + 8 * flip, hy - 6, 5.0, (0.07, 0.05, 0.04)),
                                (hx - 10 * flip, hy - 7, 4.5, (0.07, 0.05, 0.04))):
        m = (xx - ex) ** 2 + (yy - ey) ** 2 <= r * r
        img[m] = colour
        hl = (xx - ex + 1.5) ** 2 + (yy - ey + 1.5) ** 2 <= (r * 0.35) ** 2
        img[hl] = (0.95, 0.95, 0.95)
    mouth = (np.abs(yy - (hy + 20 + 0.02 * (xx - hx - 28 * flip) ** 2)) < 1.0) & (np.abs(xx - hx - 28 * flip) < 9)
    img[mouth] = (0.25, 0.12, 0.10)
    # Collar.
    col = (np.abs(_ellipse(xx, yy, hx - 2 * flip, hy + 30, 26, 9) - 1.0) < 0.35) & mask & (yy > hy + 27)
    img[col] = (0.75, 0.12, 0.12) if label == 1 else (0.12, 0.30, 0.75)
    labels[mask & (labels == 0)] = label
    labels[mask] = label


def make(seed: int = 7):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = _background(rng, xx, yy)
    labels = np.zeros((H, W), np.uint8)
    _dog(img, labels, 1, xx, yy, 140, 205, rng, coat=(0.78, 0.55, 0.30), flip=1.0, tilt=0)
    _dog(img, labels, 2, xx, yy, 380, 210, rng, coat=(0.74, 0.53, 0.31), flip=-1.0, tilt=4)
    # A soft global light from the top left and a slight vignette: reads as a photo, not a flat drawing.
    light = 1.05 - 0.12 * (xx / W) - 0.08 * (yy / H)
    vig = 1.0 - 0.18 * (((xx - W / 2) / W) ** 2 + ((yy - H / 2) / H) ** 2) * 2
    img = np.clip(img * (light * vig)[..., None], 0, 1)
    pil = Image.fromarray((img * 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return pil, labels


THUMBS = {  # example -> (caption, how the subject is chosen)
    "p3s_two_dogs_sd15": ("two dogs: pick one (SD1.5, training-free)", "points"),
    "p3s_schedule_sampler_sd15": ("P3S Sampler: timestep weight schedule", "points"),
    "p3s_adapter_sd15": ("with a trained P3S adapter + CLIP vision", "points"),
    "p3s_sdxl": ("SDXL", "points"),
    "p3s_interop_kjnodes_mask": ("KJNodes/SAM2 points, or a MASK", "mask"),
}
RECT = (60, 118, 150, 182)  # x, y, w, h of the rectangle mask in p3s_interop_kjnodes_mask.json


def make_thumbnails(reference: Path, out_dir: Path) -> list[Path]:
    """Composed previews from the pack's real selection code: [selection overlay | subject-only reference]."""
    import sys

    import torch
    from PIL import ImageDraw
    sys.path.insert(0, str(REPO))
    from p3s_core.points import PointSet
    from p3s_core.rngr import Selection, fill_outside, overlay, select_subject

    img = torch.from_numpy(np.asarray(Image.open(reference).convert("RGB"), np.float32) / 255)
    pts = PointSet.from_pixels(positive=LEFT_DOG_POINTS, negative=[RIGHT_DOG_POINT], width=W, height=H)
    by_points = select_subject(img, pts)
    rect = torch.zeros(H, W)
    x, y, w, h = RECT
    rect[y:y + h, x:x + w] = 1
    by_mask = Selection(mask=rect, subject_image=fill_outside(img, rect), similarity=rect, base_mask=rect)
    written = []
    for name, (caption, how) in THUMBS.items():
        sel = by_points if how == "points" else by_mask
        panels = [overlay(img, sel), sel.subject_image]
        tw, th = 256, 192
        canvas = Image.new("RGB", (2 * tw + 6, th + 26), (24, 24, 28))
        for i, p in enumerate(panels):
            tile = Image.fromarray((p.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).resize((tw, th), Image.LANCZOS)
            canvas.paste(tile, (i * (tw + 6), 26))
        d = ImageDraw.Draw(canvas)
        d.text((6, 7), "P3S  |  " + caption, fill=(235, 235, 235))
        d.text((tw + 12, 30), "subject-only reference", fill=(255, 255, 255))
        d.text((6, 30), "points" if how == "points" else "MASK", fill=(255, 255, 255))
        path = out_dir / f"{name}.jpg"
        canvas.save(path, quality=85, optimize=True)
        written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "assets"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--thumbnails", action="store_true",
                    help="write example_workflows/*.jpg from assets/two_dogs.png instead")
    a = ap.parse_args()
    if a.thumbnails:
        for p in make_thumbnails(REPO / "assets" / "two_dogs.png", REPO / "example_workflows"):
            print(p, p.stat().st_size, "bytes")
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pil, labels = make(a.seed)
    pil.save(out / "two_dogs.png", optimize=True)
    Image.fromarray(labels * 100).save(out / "two_dogs_masks.png", optimize=True)
    print(out / "two_dogs.png", (out / "two_dogs.png").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
