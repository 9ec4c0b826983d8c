"""The models/p3s folder for P3S adapters, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os

import folder_paths

FOLDER = "p3s"
EXTENSIONS = {".safetensors", ".sft"}  # adapters are safetensors only: no pickle


def register_model_folder() -> str:
    """Register models/p3s; keep any paths extra_model_paths.yaml already added for 'p3s'."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    entry = folder_paths.folder_names_and_paths.get(FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(EXTENSIONS))
    else:
        paths, exts = entry
        if default not in paths:
            paths.insert(0, default)
        # The yaml loader creates the entry with an empty set (= every file); narrow it to safetensors.
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))
    return default
