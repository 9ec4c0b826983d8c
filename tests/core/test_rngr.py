"""RNGR selection on synthetic scenes (no comfy, no weights)."""

import numpy as np
import pytest
import torch

from p3s_core.features import builtin_features, clip_patch_grid
from p3s_core.points import PointSet
from p3s_core.rngr import Selection, fill_outside, overlay, select_subject, select_subject_batch


def _ellipse(h, w, cx, cy, rx, ry):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def _scene(h, w, subjects, seed=0):
    """Textured greenish background with identical orange textured subjects; returns image, masks."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (0.25, 0.45, 0.2)
    img += rng.normal(0, 0.04, (h, w, 1))
    masks = []
    for cx, cy, rx, ry in subjects:
        m = _ellipse(h, w, cx, cy, rx, ry)
        img[m] = np.array([0.85, 0.5, 0.2]) + rng.normal(0, 0.04, (int(m.sum()), 1))
        masks.append(m)
    return torch.from_numpy(np.clip(img, 0, 1)), masks


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def _frac_inside(sel_mask, m):
    return (sel_mask & m).sum() / m.sum()


def test_click_on_one_of_two_identical_subjects_selects_only_it():
    img, (left, right) = _scene(256, 384, [(100, 128, 55, 40), (280, 128, 55, 40)])
    for target, other, x in ((left, right, 100), (right, left, 280)):
        sel = select_subject(img, PointSet.from_pixels(positive=[(x, 128)], width=384, height=256))
        m = sel.mask.numpy() > 0.5
        assert _iou(m, target) > 0.8
        assert _frac_inside(m, other) < 0.01
        assert isinstance(sel, Selection) and sel.mask.shape == (256, 384)
        assert set(torch.unique(sel.mask).tolist()) <= {0.0, 1.0}
        assert sel.subject_image.shape == (256, 384, 3)
        assert sel.base_mask.shape == (256, 384) and sel.similarity.ndim == 2


def test_negative_point_removes_touching_lookalike():
    # Two identical subjects overlapping slightly: one connected region without a negative point.
    img, (a, b) = _scene(256, 384, [(130, 128, 60, 45), (245, 128, 60, 45)])
    b_only = b & ~a
    pos = PointSet.from_pixels(positive=[(120, 128)], width=384, height=256)
    merged = select_subject(img, pos, split_touching=False).mask.numpy() > 0.5
    assert _frac_inside(merged, b_only) > 0.8  # the look-alike is in the region (test is meaningful)
    pts = PointSet.from_pixels(positive=[(120, 128)], negative=[(255, 128)], width=384, height=256)
    sel = select_subject(img, pts).mask.numpy() > 0.5
    assert _frac_inside(sel, b_only) < 0.1
    assert _frac_inside(sel, a) > 0.85


def test_split_touching_cuts_narrow_neck_without_negative():
    # Two bodies joined by a thin bridge: connectivity alone keeps both; the (default) split cuts it.
    img, (a, b, _) = _scene(256, 384, [(110, 128, 55, 45), (270, 128, 55, 45), (190, 128, 40, 8)])
    pts = PointSet.from_pixels(positive=[(110, 128)], width=384, height=256)
    joined = select_subject(img, pts, split_touching=False).mask.numpy() > 0.5
    assert _frac_inside(joined, b) > 0.8
    cut = select_subject(img, pts).mask.numpy() > 0.5
    assert _frac_inside(cut, b) < 0.05 and _frac_inside(cut, a) > 0.85


def test_points_for_512_apply_to_1024x768_image():
    img, (left, right) = _scene(768, 1024, [(300, 380, 150, 110), (740, 380, 150, 110)])
    # Clicked on a 512x512 preview of the same picture: x * 0.5, y * 512/768.
    text = '{"width": 512, "height": 512, "positive": [{"x": 370, "y": 253}], "negative": []}'
    sel = select_subject(img, PointSet.from_json(text))
    m = sel.mask.numpy() > 0.5
    assert _iou(m, right) > 0.8 and _frac_inside(m, left) < 0.01
    assert sel.points.positive == [(740.0, 379.5)]


def test_accepts_batched_single_image_and_json_text():
    img, (left, _) = _scene(128, 192, [(50, 64, 28, 20), (140, 64, 28, 20)])
    sel = select_subject(img[None], '[{"x": 50, "y": 64}]')
    assert _iou(sel.mask.numpy() > 0.5, left) > 0.75


def test_empty_result_raises_actionable_error():
    img, _ = _scene(128, 192, [(50, 64, 28, 20), (140, 64, 28, 20)])
    pts = PointSet.from_pixels(positive=[(50, 64)], negative=[(50, 64)], width=192, height=128)
    with pytest.raises(ValueError, match=r"P3S: .*empty.*positive point.*negative.*MASK"):
        select_subject(img, pts)


def test_no_positive_point_raises():
    img, _ = _scene(64, 64, [(32, 32, 10, 10)])
    with pytest.raises(ValueError, match="no positive point"):
        select_subject(img, PointSet.from_pixels(negative=[(3, 3)], width=64, height=64))


@pytest.mark.parametrize("mode", ["blur", "flat"])
def test_fill_changes_only_pixels_outside_the_mask(mode):
    img, (left, right) = _scene(256, 384, [(100, 128, 55, 40), (280, 128, 55, 40)])
    sel = select_subject(img, PointSet.from_pixels(positive=[(100, 128)], width=384, height=256), fill=mode)
    inside = sel.mask > 0.5
    assert torch.equal(sel.subject_image[inside], img[inside])
    # Outside really changed, and the look-alike lost its colour and texture.
    diff = (sel.subject_image - img).abs().sum(-1)
    assert (diff[~inside] > 1e-4).float().mean() > 0.95
    r = torch.from_numpy(right)
    assert diff[r].mean() > 0.2
    assert sel.subject_image[r].std(0).mean() < 0.5 * img[r].std(0).mean() + 0.05
    if mode == "flat":
        assert torch.allclose(sel.subject_image[~inside], torch.tensor(0.5))
    again = fill_outside(img, sel.mask, mode, exclude=sel.lookalike)  # the public fill, at full size
    assert (again - sel.subject_image).abs().max() < 0.03


def test_unknown_fill_mode():
    img, _ = _scene(64, 64, [(32, 32, 10, 10)])
    with pytest.raises(ValueError, match="fill mode 'inpaint'"):
        fill_outside(img, torch.ones(64, 64), "inpaint")


def test_batch_applies_one_point_set_with_rescaling():
    a, (la, _) = _scene(256, 256, [(70, 128, 40, 30), (190, 128, 40, 30)], seed=1)
    b, (lb, _) = _scene(256, 256, [(70, 128, 40, 30), (190, 128, 40, 30)], seed=2)
    pts = PointSet.from_pixels(positive=[(35, 64)], width=128, height=128)  # half-size preview
    sels = select_subject_batch(torch.stack([a, b]), pts)
    assert len(sels) == 2
    for sel, target in zip(sels, (la, lb)):
        assert _iou(sel.mask.numpy() > 0.5, target) > 0.8


def test_external_feature_grid_uses_cosine():
    # A 16x16 "CLIP" grid where two regions share one direction: spatial connectivity must decide.
    f = torch.zeros(16, 16, 8)
    f[..., 0] = 1.0
    f[4:10, 2:6, 1] = 5.0
    f[4:10, 10:14, 1] = 5.0
    img = torch.full((160, 160, 3), 0.5)
    img[40:100, 20:60] = img[40:100, 100:140] = torch.tensor([0.8, 0.4, 0.2])  # what the grid describes
    sel = select_subject(img, PointSet.from_pixels(positive=[(40, 70)], width=160, height=160), f, dilation=0)
    m = sel.mask
    assert m[70, 40] == 1 and m[70, 120] == 0
    assert 0.6 < m[40:100, 20:60].mean() and m[:, 80:].sum() == 0
    sels = select_subject_batch(img[None].repeat(2, 1, 1, 1), '[{"x": 120, "y": 70}]', f[None].repeat(2, 1, 1, 1))
    assert all(s.mask[70, 120] == 1 and s.mask[70, 40] == 0 for s in sels)


def test_clip_patch_grid_shapes_and_error():
    g = clip_patch_grid(torch.randn(1, 257, 1024))
    assert g.shape == (16, 16, 1024)
    t = torch.arange(5 * 3, dtype=torch.float32).view(5, 3)
    assert torch.equal(clip_patch_grid(t)[0, 0], t[1])  # CLS dropped
    with pytest.raises(ValueError, match=r"P3S: .*52 tokens.*square ViT.*ViT-L/H.*disconnect clip_vision"):
        clip_patch_grid(torch.randn(52, 32))


def test_builtin_features_shape_and_normalised():
    img, _ = _scene(256, 512, [(100, 128, 55, 40)])
    f = builtin_features(img, grid=64)
    assert f.shape[:2] == (32, 64) and f.ndim == 3 and torch.isfinite(f).all()
    assert f.mean(dim=(0, 1)).abs().max() < 1e-3


def test_overlay_draws_points_and_tint():
    img, _ = _scene(256, 384, [(100, 128, 55, 40), (280, 128, 55, 40)])
    pts = PointSet.from_pixels(positive=[(100, 128)], negative=[(280, 128)], width=384, height=256)
    sel = select_subject(img, pts)
    ov = overlay(img, sel)
    assert ov.shape == img.shape
    assert torch.allclose(ov[128, 100], torch.tensor([0.1, 1.0, 0.2]))
    assert torch.allclose(ov[128, 280], torch.tensor([1.0, 0.15, 0.1]))
    assert not torch.equal(ov[128, 80], img[128, 80])  # tinted inside the mask


def test_large_image_stays_small_and_correct():
    img, (left, right) = _scene(512, 512, [(130, 256, 80, 60), (380, 256, 80, 60)])
    big = torch.nn.functional.interpolate(img.permute(2, 0, 1)[None], size=(2048, 2048))[0].permute(1, 2, 0)
    sel = select_subject(big, PointSet.from_pixels(positive=[(130, 256)], width=512, height=512))
    small = torch.nn.functional.interpolate(sel.mask[None, None], size=(512, 512))[0, 0].numpy() > 0.5
    assert _iou(small, left) > 0.8 and _frac_inside(small, right) < 0.01


def test_blur_fill_removes_the_lookalike_instead_of_blurring_it():
    img, (left, right) = _scene(256, 384, [(100, 128, 55, 40), (280, 128, 55, 40)])
    sel = select_subject(img, PointSet.from_pixels(positive=[(100, 128)], width=384, height=256))
    subject_colour = torch.tensor([0.85, 0.5, 0.2])
    background = torch.tensor([0.25, 0.45, 0.2])
    core = torch.from_numpy(_ellipse(256, 384, 280, 128, 40, 28))  # the look-alike's interior
    filled = sel.subject_image[core].mean(0)
    assert sel.lookalike is not None and bool(sel.lookalike[core].all())
    # the look-alike's pixels now carry the background's colour, not a blurred copy of the subject's
    assert (filled - background).abs().max() < 0.08
    assert (filled - subject_colour).abs().max() > 0.3
    plain = fill_outside(img, sel.mask, "blur")  # without the look-alike map: a blurred blob remains
    assert (plain[core].mean(0) - background).abs().max() > (filled - background).abs().max()


def test_default_split_keeps_thin_parts_and_cuts_an_overlapping_lookalike():
    # A body with a thin tail and a leg, overlapping a look-alike body: the look-alike goes, the
    # thin parts stay (they are thinner than any look-alike could be).
    img, (a, b, tail, leg) = _scene(256, 384, [(130, 128, 55, 42), (232, 128, 55, 42), (55, 105, 35, 11),
                                               (120, 180, 12, 25)])
    pts = PointSet.from_pixels(positive=[(120, 128)], width=384, height=256)
    merged = select_subject(img, pts, split_touching=False).mask.numpy() > 0.5
    assert _frac_inside(merged, b & ~a) > 0.8  # connectivity alone keeps the look-alike
    sel = select_subject(img, pts).mask.numpy() > 0.5
    assert _frac_inside(sel, b & ~a) < 0.15
    assert _frac_inside(sel, a) > 0.85
    assert _frac_inside(sel, tail & ~a) > 0.6 and _frac_inside(sel, leg & ~a) > 0.6


# --- issue 13: a click deep inside a subject is never refused; thin parts stay; time does not follow texture ---

def _random_scene(rng, size=160):
    """A random scene: 1-4 look-alike shapes (ellipses, boxes, stars, with or without thin limbs), separated
    or touching, some cut by the border, on a flat, noisy or strongly textured background."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = rng.uniform(0, 1, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg
    style = rng.integers(0, 3)
    if style == 1:
        img += rng.normal(0, 0.05, (size, size, 1))
    elif style == 2:  # stripes of a second colour plus grain
        stripes = np.sin((xx * rng.uniform(-1, 1) + yy) / rng.uniform(2, 6)) > 0
        img[stripes] = rng.uniform(0, 1, 3)
        img += rng.normal(0, 0.08, (size, size, 1))
    colour = rng.uniform(0, 1, 3)
    kind = rng.integers(0, 3)
    r = size * rng.uniform(0.08, 0.16)
    masks = []
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    for _ in range(int(rng.integers(1, 5))):
        ang = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        if kind == 0:
            m = (u / (r * rng.uniform(1, 1.8))) ** 2 + (v / r) ** 2 <= 1
        elif kind == 1:
            m = (np.abs(u) <= r * rng.uniform(1, 1.6)) & (np.abs(v) <= r)
        else:
            m = np.hypot(u, v) <= r * (1 + 0.3 * np.cos(5 * np.arctan2(v, u)))
        if rng.uniform() < 0.4:  # a thin limb
            m |= (np.abs(v) <= max(1.0, 0.08 * r)) & (u > 0) & (u < 2.2 * r)
        img[m] = colour + rng.normal(0, 0.03, (int(m.sum()), 1))
        for prev in masks:
            prev &= ~m
        masks.append(m)
        step = r * rng.uniform(1.7, 3.5)  # next one touching, overlapping or apart
        a = rng.uniform(0, 2 * np.pi)
        cx, cy = cx + step * np.cos(a), cy + step * np.sin(a)
    masks = [m for m in masks if m.sum() > 20]
    img = np.clip(img, 0, 1)
    deep = []
    for m in masks:
        dt = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
        deep.append((x + 0.5, y + 0.5))
    return torch.from_numpy(img.astype(np.float32)), masks, deep


def test_click_at_deepest_interior_point_is_never_refused():
    """Property over many random scenes: the selection contains the click and never raises."""
    rng = np.random.default_rng(13)
    clicks = 0
    for _ in range(60):
        img, masks, deep = _random_scene(rng)
        for m, (x, y) in zip(masks, deep):
            sel = select_subject(img, PointSet.from_pixels(positive=[(x, y)], width=160, height=160))
            assert sel.mask[int(y), int(x)] == 1
            assert sel.mask.sum() > 0
            clicks += 1
    assert clicks > 100


def test_thin_limbs_stay_attached_to_the_clicked_body():
    # A body with three long limbs 3 px wide (a tail and two legs) next to a look-alike body.
    img, (body, other, tail, leg1, leg2) = _scene(256, 384, [(130, 120, 45, 35), (290, 120, 45, 35),
                                                              (60, 118, 45, 1.5), (110, 175, 1.5, 30),
                                                              (150, 175, 1.5, 30)])
    sel = select_subject(img, PointSet.from_pixels(positive=[(130, 120)], width=384, height=256)).mask.numpy() > 0.5
    for limb in (tail, leg1, leg2):
        assert _frac_inside(sel, limb & ~body) > 0.7
    assert _frac_inside(sel, other) < 0.01 and _iou(sel, body | tail | leg1 | leg2) > 0.85


@pytest.mark.parametrize("colour", [(0, 0, 0), (1, 1, 1), (0.5, 0.5, 0.5), (1, 0, 0), (0.2, 0.6, 0.9)])
def test_constant_colour_image_gets_the_same_clear_message_for_every_colour(colour):
    img = torch.tensor(colour, dtype=torch.float32).expand(96, 128, 3).contiguous()
    with pytest.raises(ValueError, match=r"^P3S: image: the image is one flat colour .* no subject to select"):
        select_subject(img, PointSet.from_pixels(positive=[(64, 48)], width=128, height=96))


@pytest.mark.parametrize("shape", [(1, 1), (4, 300), (7, 7)])
def test_too_small_image_is_refused_with_the_minimum_size(shape):
    img = torch.rand(*shape, 3)
    with pytest.raises(ValueError, match=r"^P3S: image: the image is \d+x\d+ px; point selection needs at least 8x8"):
        select_subject(img, '[{"x": 0.5, "y": 0.5}]')


def test_non_finite_image_is_refused():
    img, _ = _scene(64, 64, [(32, 32, 10, 10)])
    img[3, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        select_subject(img, '[{"x": 32, "y": 32}]')


def test_time_on_a_textured_image_stays_close_to_a_flat_one():
    """1024 px, 1 positive + 1 negative point: the working resolution is fixed, so texture costs little
    (issue 13: within 1.5x; medians of interleaved runs in one process, so machine load hits both alike)."""
    import time

    rng = np.random.default_rng(5)
    flat, (a, b) = _scene(1024, 1024, [(300, 500, 150, 110), (720, 500, 150, 110)])
    grain = torch.from_numpy(rng.normal(0, 0.15, (1024, 1024, 1)).astype(np.float32))
    stripes = torch.from_numpy((np.sin(np.arange(1024) / 3.0)[None, :, None] > 0).astype(np.float32)) * 0.3
    outside = torch.from_numpy(~(a | b))[..., None]
    textured = torch.where(outside, (flat + grain + stripes).clamp(0, 1), flat)
    pts = PointSet.from_pixels(positive=[(300, 500)], negative=[(720, 500)], width=1024, height=1024)
    times = {"flat": [], "textured": []}
    for _ in range(2):  # warm-up
        select_subject(flat, pts), select_subject(textured, pts)
    for _ in range(7):
        for name, im in (("flat", flat), ("textured", textured)):
            t0 = time.perf_counter()
            sel = select_subject(im, pts)
            times[name].append(time.perf_counter() - t0)
        assert _iou(sel.mask.numpy() > 0.5, a) > 0.9  # the textured run is a real selection, not a shortcut
    ratio = float(np.median(times["textured"]) / np.median(times["flat"]))
    assert ratio < 1.5, (ratio, times)


def test_touching_lookalikes_of_the_bench_generator_are_told_apart():
    """Touching look-alikes from bench/selection_scenes.py (a seed the bench does not use, 256 px), one
    click at the deepest point of each: the mean IoU with the clicked subject is at least 0.79 (0.75
    before each click flooded the split from its disc and its hill's top); connectivity alone is far
    below (the scenes really are touching)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from selection_scenes import click_point, make_scene

    rng = np.random.default_rng(2025)
    split, joined = [], []
    for _ in range(12):
        scene = make_scene(rng, "touching", 256)
        img = torch.from_numpy(scene.image)
        for m in scene.masks:
            pts = PointSet.from_pixels(positive=[click_point(m)], width=256, height=256)
            split.append(_iou(select_subject(img, pts).mask.numpy() > 0.5, m))
            joined.append(_iou(select_subject(img, pts, split_touching=False).mask.numpy() > 0.5, m))
    assert len(split) >= 30
    assert np.mean(joined) < 0.5
    assert np.mean(split) >= 0.79


@pytest.mark.parametrize("shape", ["rounded_rectangle", "long_ellipse"])
def test_split_keeps_one_long_body_whole_wherever_it_is_clicked(shape):
    """One long body (2:1 rounded rectangle, 2.5:1 ellipse), clicked anywhere at a quarter of its depth or
    more: its far end is never 'too far to be the clicked body'. The body's thickness and centre are read
    on the ridge around the top the click climbs to; read at one point of a flat ridge, or at the click,
    the far end of the rectangle went (667 of 2645 pixels)."""
    from scipy import ndimage

    from p3s_core.split import split_lookalikes

    yy, xx = np.mgrid[0:80, 0:120]
    if shape == "rounded_rectangle":
        qx, qy = np.maximum(np.abs(xx - 60) - 30, 0), np.maximum(np.abs(yy - 40) - 12, 0)
        body = qx * qx + qy * qy <= 36
    else:
        body = ((yy - 40) / 12.0) ** 2 + ((xx - 60) / 30.0) ** 2 <= 1
    depth = ndimage.distance_transform_edt(body)
    cells = np.argwhere(depth >= 0.25 * depth.max())
    for r, c in cells[:: max(1, len(cells) // 60)]:
        out = split_lookalikes(body, [(int(r), int(c))], [], auto=True)
        assert out.sum() == body.sum(), (shape, r, c, int(body.sum() - out.sum()))


def test_split_cuts_off_a_thick_part_too_far_to_be_the_clicked_body_and_keeps_a_thin_one():
    """A clicked disc (radius 20) merged with a long bar 0.65x as thick, which has no hill of its own (it is
    not thick enough to be found as a look-alike), and with a long thin tail: the bar's far part is too far
    from the clicked body to be it and goes; the tail (too thin to count) and the disc stay. The same from a
    click half way between the disc's centre and its edge: the cut is the same (measured at the click, the
    disc's thickness would be half, and the bar would be cut nearer)."""
    from p3s_core.split import split_lookalikes

    yy, xx = np.mgrid[0:200, 0:260]
    disc = (yy - 60) ** 2 + (xx - 40) ** 2 <= 20 ** 2
    bar = (np.abs(yy - 60) <= 13) & (xx >= 40) & (xx <= 240)
    tail = (np.abs(xx - 40) <= 2) & (yy >= 60) & (yy <= 190)
    region = disc | bar | tail
    out = split_lookalikes(region, [(60, 40)], [], auto=True)
    far_bar = bar & (xx >= 120)
    assert _frac_inside(out, disc) > 0.95
    assert _frac_inside(out, bar & (xx < 65)) > 0.95  # the bar next to the disc is within reach
    assert _frac_inside(out, far_bar) < 0.05
    assert _frac_inside(out, tail & ~disc) > 0.95
    assert (split_lookalikes(region, [(50, 31)], [], auto=True) == out).all()  # off-centre click
    # Without the automatic split (negative points only) nothing is cut.
    assert split_lookalikes(region, [(60, 40)], [], auto=False).sum() == region.sum()


def test_bench_off_centre_clicks_lie_in_the_requested_depth_band():
    """bench/selection.py's off-centre click: a pixel of the target between 1/4 and 3/4 of its depth,
    the same for the same seed, and not always the same pixel (it samples the band)."""
    import sys
    from pathlib import Path

    from scipy import ndimage

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from selection_scenes import off_centre_point

    body = _ellipse(80, 120, 60, 40, 30, 12)
    depth = ndimage.distance_transform_edt(np.pad(body, 1))[1:-1, 1:-1]
    clicks = [off_centre_point(body, np.random.default_rng([3, k])) for k in range(20)]
    for x, y in clicks:
        assert body[int(y), int(x)]
        assert 0.25 * depth.max() <= depth[int(y), int(x)] <= 0.75 * depth.max()
    assert clicks == [off_centre_point(body, np.random.default_rng([3, k])) for k in range(20)]
    assert len(set(clicks)) > 10


def test_bench_loss_split_adds_up_to_the_lost_iou():
    """bench/selection.py's breakdown of a family's lost IoU: over-selection, under-selection, boundary;
    the parts sum to 1 - mean IoU and a target that is both over and under counts once (as over)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from selection import loss_split

    ious, precision, recall = [1.0, 0.4, 0.5, 0.9, 0.3], [1.0, 0.4, 1.0, 0.95, 0.5], [1.0, 1.0, 0.5, 0.95, 0.6]
    out = loss_split(ious, precision, recall)
    assert out == pytest.approx({"over": (0.6 + 0.7) / 5, "under": 0.5 / 5, "boundary": 0.1 / 5})
    assert sum(out.values()) == pytest.approx(1 - np.mean(ious))


@pytest.mark.parametrize("shape", ["rectangle", "ellipse"])
def test_split_keeps_one_compact_body_whole_wherever_it_is_clicked(shape):
    """One body, no look-alike: a click anywhere inside it at a quarter of its depth or more (users do not
    click the deepest point) never cuts part of it off as 'too far to be the clicked body'."""
    from scipy import ndimage

    from p3s_core.split import split_lookalikes

    yy, xx = np.mgrid[0:40, 0:32]
    body = ((yy >= 8) & (yy < 32) & (xx >= 8) & (xx < 24)) if shape == "rectangle" else \
        (((yy - 20) / 13.0) ** 2 + ((xx - 16) / 9.0) ** 2 <= 1)
    depth = ndimage.distance_transform_edt(body)
    cells = np.argwhere(depth >= 0.25 * depth.max())
    for r, c in cells[:: max(1, len(cells) // 40)]:
        out = split_lookalikes(body, [(int(r), int(c))], [], auto=True)
        assert out.sum() == body.sum(), (shape, r, c, int(body.sum() - out.sum()))


def test_split_still_cuts_a_touching_look_alike_when_the_click_is_off_centre():
    """Two discs touching through a neck: a click anywhere in the left one at half its depth or more keeps
    the left disc and cuts the right one (the clicked body's own top is not another body, the neighbour's is)."""
    from scipy import ndimage

    from p3s_core.split import split_lookalikes

    yy, xx = np.mgrid[0:60, 0:100]
    left = (yy - 30) ** 2 + (xx - 28) ** 2 <= 18 ** 2
    right = (yy - 30) ** 2 + (xx - 70) ** 2 <= 18 ** 2
    neck = (np.abs(yy - 30) <= 5) & (xx >= 40) & (xx <= 58)
    region = left | right | neck
    depth = ndimage.distance_transform_edt(left)
    cells = np.argwhere(depth >= 0.5 * depth.max())
    for r, c in cells[:: max(1, len(cells) // 25)]:
        out = split_lookalikes(region, [(int(r), int(c))], [], auto=True)
        assert _frac_inside(out, left) > 0.9 and _frac_inside(out, right) < 0.1, (r, c)


def test_split_keeps_a_small_knob_when_the_body_is_clicked_off_its_middle():
    """A disc (radius 20) with a knob 0.45x as thick on its side (an ear, a head), clicked at its centre or
    off its middle (a click 0.5-0.6 x as high as its hill's top): the knob is never taken for another body.
    Measured at such a click alone, the body's height was half, and the knob was cut off from 11 of these
    20 clicks; the height is now read a quarter of the way up to the hill's top."""
    from p3s_core.split import _climb, _landscape, split_lookalikes

    yy, xx = np.mgrid[0:80, 0:110]
    body = ((yy - 40) ** 2 + (xx - 40) ** 2 <= 20 ** 2) | ((yy - 40) ** 2 + (xx - 62) ** 2 <= 9 ** 2)
    land = _landscape(body, None)
    clicks = [(40, 40)]
    for r, c in np.argwhere(body)[::7]:
        if 0.5 <= land[r, c] / land[_climb(land, (int(r), int(c)))] < 0.6:
            clicks.append((int(r), int(c)))
    assert len(clicks) > 15
    for cell in clicks:
        out = split_lookalikes(body, [cell], [], auto=True)
        assert out.sum() == body.sum(), (cell, int(body.sum() - out.sum()))


def test_split_never_joins_across_a_border_an_outline_runs_along():
    """Overlapping look-alikes have no neck, so the pass between their basins can be as high as the lower
    hill (a join); a drawn outline along their border must still keep the neighbour out. ``_outlines``
    scores a border by the median gradient along it over the region's median: a line along the whole
    border scores far above ``OUTLINE``, texture that only peaks here and there along it does not."""
    from p3s_core import split

    rng = np.random.default_rng(0)
    keep = np.ones((60, 80), bool)
    basins = np.ones((60, 80), np.int32)
    basins[:, 40:] = 2
    texture = 1.0 + 0.3 * rng.random((60, 80))
    outlined = texture.copy()
    outlined[:, 39:41] = 12.0  # the outline between the two bodies
    speckled = texture.copy()
    speckled[::15, 39:41] = 12.0  # texture peaking here and there on the border, not a line along it
    assert split._outlines(basins, outlined, keep, 3)[1, 2] > split.OUTLINE
    assert split._outlines(basins, speckled, keep, 3)[1, 2] < split.OUTLINE
    assert split._outlines(basins, texture, keep, 3)[1, 2] < 2.0
    # A pass as high as the lower hill joins the neighbour, unless an outline runs along the border.
    neck = np.zeros((3, 3))
    neck[1, 2] = neck[2, 1] = 1.0
    peak = np.array([0.0, 1.0, 1.0])
    assert split._join(["pos", "other"], neck, peak, split.NECK) == {1, 2}
    line = split._outlines(basins, outlined, keep, 3)
    assert split._join(["pos", "other"], neck, peak, split.NECK, line) == {1}
