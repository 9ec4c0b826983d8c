"""Every node the pack ships. A node is listed here only once it works."""
from __future__ import annotations

from .picker import P3SPointPicker

NODES: list = [P3SPointPicker]
