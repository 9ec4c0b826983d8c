"""Every node the pack ships. A node is listed here only once it works."""
from __future__ import annotations

NODES: list = []
