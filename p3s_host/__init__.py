"""Development tooling shipped with the pack: a real ComfyUI host for the demo, the benches, the trainer's
tiny models and the tests.

- ``server``: the ComfyUI base-directory layout and a real server on 127.0.0.1 (``Server``), with this pack
  and any extra custom-node folders installed;
- ``comfy_env``: ComfyUI imported in-process (``import_comfy``, ``load_custom_node``, ``load_pack``,
  ``InProcessHost``);
- ``tiny_models`` + ``tiny_registrar/``: tiny random-weight SD1.5/SDXL/CLIP-vision models that load through
  ComfyUI's own loaders (the registrar is a custom node);
- ``scenes``: synthetic reference scenes with known instance masks.

This package may import ComfyUI. The pack's runtime (``__init__.py``, ``nodes/``, ``p3s_core/``) never
imports it; ``tests/``, ``scripts/`` and ``bench/`` do.
"""
