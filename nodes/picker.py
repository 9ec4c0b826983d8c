"""P3S Point Picker: holds the clicked points and previews the selection they make."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..p3s_core.points import PointSet
from ..p3s_core.rngr import overlay, select_subject
from .features import clip_features
from .types import CATEGORY, Points

log = logging.getLogger("P3S")

# UI outputs, under keys of their own: the frontend shows "images" as a second, unclickable copy of the picture
# below the widget. "p3s_image": the reference of the last run, the widget's picture when no Load Image is
# connected; "p3s_overlay": the selection the run made (tint and points), for scripts and the history.
UI_IMAGE_KEY, UI_OVERLAY_KEY = "p3s_image", "p3s_overlay"

POINTS_HELP = ('Points in image pixels: {"width": W, "height": H, "positive": [{"x": 10, "y": 20}], '
               '"negative": []}. The KJNodes/SAM2 list [{"x": .., "y": ..}] (all positive) works too. '
               "Click on the image to edit them: left click = positive, right or shift click = negative.")


def parse_points(text: str, width: int, height: int) -> PointSet:
    """Points typed or clicked for an image of width x height (rescaled if recorded for another size)."""
    pts = PointSet.from_json(text, width=width, height=height)
    pts.validate()
    return pts.rescaled(width, height)


class P3SPointPicker(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="P3SPointPicker",
            display_name="P3S Point Picker",
            category=CATEGORY,
            description="Click points on one subject of the reference image. Outputs the points and the "
                        "subject mask the RNGR selection makes from them, and previews that mask.",
            inputs=[
                io.Image.Input("image", tooltip="The reference image (the first image of a batch is "
                                                "previewed; the points apply to every image)."),
                io.String.Input("points", multiline=True, default="", tooltip=POINTS_HELP),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional: CLIP vision patch features for the selection "
                                            "instead of the built-in colour/texture features."),
            ],
            outputs=[
                Points.Output(display_name="points"),
                io.Mask.Output(display_name="mask"),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, points: str, clip_vision=None) -> io.NodeOutput:
        _, height, width, _ = image.shape
        pts = parse_points(points, width, height)
        feats = clip_features(clip_vision, image) if clip_vision is not None else None
        masks, previews = [], []
        for i in range(image.shape[0]):
            sel = select_subject(image[i], pts, None if feats is None else feats[i])
            masks.append(sel.mask)
            if i == 0:
                previews.append(overlay(image[i], sel))
        preview = torch.stack(previews).clamp(0, 1)
        saved = {UI_IMAGE_KEY: ui.PreviewImage(image[:1].clamp(0, 1), cls=cls).as_dict()["images"],
                 UI_OVERLAY_KEY: ui.PreviewImage(preview, cls=cls).as_dict()["images"]}
        return io.NodeOutput(pts, torch.stack(masks), ui=saved)
