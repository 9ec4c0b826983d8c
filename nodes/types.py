"""Socket types the pack defines."""
from comfy_api.latest import io

Points = io.Custom("P3S_POINTS")    # p3s_core.points.PointSet, in pixels of the picker's image
Adapter = io.Custom("P3S_ADAPTER")  # p3s_core.adapter.P3SAdapter (+ its file name)

CATEGORY = "P3S"
