"""P3S Point Picker: holds the clicked points and previews the selection they make."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..p3s_core.points import MAX_POINTS, PointSet
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
               "Click on the image to edit them: left click = positive, right or shift click = negative. "
               f"At most {MAX_POINTS} points.")

SPLIT_HELP = ("Advanced. On (default): a look-alike that touches the clicked subject is cut off at the "
              "neck or outline between them. Off: everything connected to the click that looks like the "
              "subject is kept (use negative points to remove look-alikes).")


def split_input() -> io.Boolean.Input:
    """The touching-look-alike split option, shared by the Point Picker and P3S Apply."""
    return io.Boolean.Input("split_touching", default=True, optional=True, tooltip=SPLIT_HELP)


class P3SPointPicker(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="P3SPointPicker",
            display_name="P3S Point Picker",
            category=CATEGORY,
            description="Click points on one subject of the reference image. Outputs the points and the "
                        "subject mask the selection makes from them, and previews that mask.",
            inputs=[
                io.Image.Input("image", tooltip="The reference image (the first image of a batch is "
                                                "previewed; the points apply to every image)."),
                io.String.Input("points", multiline=True, default="", tooltip=POINTS_HELP),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional: CLIP vision patch features for the selection "
                                            "instead of the built-in colour/texture features."),
                split_input(),
            ],
            outputs=[
                Points.Output(display_name="points"),
                io.Mask.Output(display_name="mask"),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, points: str, clip_vision=None, split_touching: bool = True
                ) -> io.NodeOutput:
        _, height, width, _ = image.shape
        pts = PointSet.for_image(points, width, height)
        feats = clip_features(clip_vision, image) if clip_vision is not None else None
        masks, previews = [], []
        for i in range(image.shape[0]):
            sel = select_subject(image[i], pts, None if feats is None else feats[i], split_touching=split_touching)
            masks.append(sel.mask)
            if i == 0:
                previews.append(overlay(image[i], sel))
        preview = torch.stack(previews).clamp(0, 1)
        saved = {UI_IMAGE_KEY: ui.PreviewImage(image[:1].clamp(0, 1), cls=cls).as_dict()["images"],
                 UI_OVERLAY_KEY: ui.PreviewImage(preview, cls=cls).as_dict()["images"]}
        return io.NodeOutput(pts, torch.stack(masks), ui=saved)
