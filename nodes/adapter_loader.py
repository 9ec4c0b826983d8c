"""P3S Load Adapter: loads a trained P3S adapter (.safetensors) from models/p3s."""
from __future__ import annotations

import logging

import folder_paths
from comfy_api.latest import io

from ..p3s_core.adapter import load_adapter
from .folders import FOLDER
from .types import CATEGORY, Adapter

log = logging.getLogger("P3S")


def adapter_path(adapter_name: str) -> str:
    """Full path of ``adapter_name`` in the p3s model folders (models/p3s + extra_model_paths.yaml)."""
    path = folder_paths.get_full_path(FOLDER, adapter_name) if adapter_name else None
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths(FOLDER)) or "(no p3s folder registered)"
        raise ValueError(f"P3S: adapter_name: adapter file {adapter_name!r} was not found. Searched: {searched}. "
                         "Put the .safetensors adapter in one of these folders (models/p3s, or a 'p3s:' entry "
                         "of extra_model_paths.yaml) and refresh the node list")
    return path


class P3SLoadAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="P3SLoadAdapter",
            display_name="P3S Load Adapter",
            category=CATEGORY,
            description="Loads a trained P3S adapter (.safetensors, made by scripts/train_adapter.py) from "
                        "models/p3s. Connect it to P3S Apply together with the CLIP vision model it was "
                        "trained with.",
            inputs=[
                io.Combo.Input("adapter_name", options=folder_paths.get_filename_list(FOLDER),
                               tooltip="A P3S adapter file in models/p3s (or a 'p3s' folder of "
                                       "extra_model_paths.yaml). One adapter per model family (SD1.5 / SDXL)."),
            ],
            outputs=[Adapter.Output(display_name="adapter")],
        )

    @classmethod
    def validate_inputs(cls, adapter_name):
        return True  # a missing file is reported by execute with the folders searched

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        # fp32 on CPU: the MODEL's patch moves it to the MODEL's device when it runs.
        adapter = load_adapter(adapter_path(adapter_name), device="cpu")
        adapter.requires_grad_(False)
        return io.NodeOutput(adapter)
