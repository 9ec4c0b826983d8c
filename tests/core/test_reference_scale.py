"""The reference crop and its levels: the reference pass never outgrows the generation (pure core)."""
import math

import pytest
import torch

from p3s_core import reference_scale as rs


def _mask(h, w, box):
    m = torch.zeros(1, h, w)
    top, left, bottom, right = box
    m[:, top:bottom, left:right] = 1
    return m


def test_box_is_the_subject_plus_margin_in_whole_cells():
    top, left, bottom, right = rs.subject_box(_mask(384, 512, (122, 63, 296, 207)), margin=0.2)
    assert (bottom - top) % 8 == 0 and (right - left) % 8 == 0
    pad = 0.2 * 174
    assert top <= 122 - pad + 8 and bottom >= 296 + pad - 8 and left <= 63 - pad + 8 and right >= 207 + pad - 8
    assert bottom - top <= 174 + 2 * pad + 8 and right - left <= 174 + 2 * pad + 8  # no more than asked
    assert 0 <= top and 0 <= left and bottom <= 384 and right <= 512


def test_box_stays_inside_the_image_and_covers_the_union():
    m = torch.cat([_mask(200, 300, (0, 0, 30, 40)), _mask(200, 300, (150, 250, 200, 300))])
    top, left, bottom, right = rs.subject_box(m)
    assert (top, bottom) == (0, 200) and right - left == 296 and 0 <= left <= 4  # 300 px: 37 whole cells
    tiny = rs.subject_box(_mask(200, 300, (100, 100, 102, 102)))
    assert tiny[2] - tiny[0] == rs.MIN_LEVEL_SIDE and tiny[3] - tiny[1] == rs.MIN_LEVEL_SIDE
    assert rs.subject_box(torch.zeros(1, 64, 80)) == (0, 0, 64, 80)


def test_levels_halve_every_two_steps_down_to_the_minimum_side():
    sizes = rs.level_sizes(256, 192)
    assert sizes[0] == (256, 192, 1.0)
    assert all(h % 8 == 0 and w % 8 == 0 and min(h, w) >= rs.MIN_LEVEL_SIDE for h, w, _ in sizes)
    scales = [s for *_, s in sizes]
    assert scales == sorted(scales, reverse=True) and len(set(scales)) == len(scales)
    assert any(abs(s - 0.5) < 0.05 for s in scales)
    assert rs.level_sizes(48, 200) == [(48, 200, 1.0)]  # already under the minimum: only the crop itself


def _levels(crop_h, crop_w, full_h, full_w):
    sizes = rs.level_sizes(crop_h, crop_w)
    latents = [torch.zeros(1, 4, h // 8, w // 8) for h, w, _ in sizes]
    masks = [torch.ones(1, h // 8, w // 8) for h, w, _ in sizes]
    return rs.ReferenceLevels(latents, masks, [s for *_, s in sizes], full_h / 8 * full_w / 8)


@pytest.mark.parametrize("gen", [(32, 32), (64, 64), (128, 128), (48, 80), (8, 8)])
def test_the_picked_level_never_outgrows_the_generation(gen):
    levels = _levels(232, 240, 384, 512)  # the two-dogs example: the left dog's box, a 512x384 photo
    i = levels.pick(*gen)
    # the whole photo at that level's scale covers at most the generation's cells ...
    cells_at_level = levels.full_cells * levels.scales[i] ** 2
    if i < len(levels.scales) - 1:
        assert cells_at_level <= gen[0] * gen[1] * (1 + 1e-6)
        # ... and the next larger level would not
        if i > 0:
            assert levels.full_cells * levels.scales[i - 1] ** 2 > gen[0] * gen[1]
    else:  # even the smallest level is larger: the smallest is used
        assert i == len(levels.scales) - 1
    crop = levels.latents[i].shape[-2] * levels.latents[i].shape[-1]
    assert crop <= max(gen[0] * gen[1], levels.latents[-1].shape[-2] * levels.latents[-1].shape[-1])


def test_a_larger_generation_uses_the_full_crop_and_the_scale_constant_matters():
    levels = _levels(232, 240, 384, 512)
    assert levels.pick(128, 128) == 0
    assert levels.pick(32, 32) > 0
    assert levels.pick(32, 32, reference_scale=4.0) < levels.pick(32, 32)
    assert math.isclose(levels.target_scale(48, 64), 1.0)
    single = rs.ReferenceLevels.single(torch.zeros(2, 4, 10, 12), torch.ones(2, 10, 12))
    assert single.pick(4, 4) == 0 and single.pick(100, 100) == 0
