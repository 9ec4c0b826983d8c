"""Every node the pack ships. A node is listed here only once it works."""
from __future__ import annotations

from .adapter_loader import P3SLoadAdapter
from .apply import P3SApply
from .picker import P3SPointPicker
from .sampler import P3SSampler

NODES: list = [P3SPointPicker, P3SApply, P3SSampler]
NODES.append(P3SLoadAdapter)
