"""ComfyUI imported into this process: the bootstrap the trainer and the benches share, and the in-process host.

- ``import_comfy``: put a ComfyUI checkout on ``sys.path`` without letting it parse our argv, pick CPU or
  the process's GPU (``LOCAL_RANK`` under torchrun), and import ``comfy.model_management``.
- ``load_custom_node``: load a custom-node folder with ComfyUI's own loader, as ComfyUI does at start-up
  (how a model-family pack such as the tiny demo models registers itself before models load).
- ``load_pack`` / ``pack_module``: this pack as an importable package (reused when already loaded).
- ``InProcessHost``: a ComfyUI base directory, the extra custom nodes and the pack loaded in-process, and
  ``run_prompt`` to execute an API prompt without a server.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Sequence

from .server import COMFYUI_DIR, PACK_NAME, REPO, TINY_REGISTRAR, ExecutionFailed, make_layout


def import_comfy(comfyui_dir: str | os.PathLike | None = None, cpu: bool | None = None,
                 args_overrides: dict | None = None) -> ModuleType:
    """ComfyUI importable here; returns ``comfy.model_management``.

    ``comfyui_dir``: default ``$COMFYUI_DIR``, then the test host. ``cpu``: True forces the CPU; None uses
    the GPU when torch sees one (under torchrun, the one of ``LOCAL_RANK``). ``args_overrides``: ComfyUI
    command-line settings (``comfy.cli_args.args``) to set before ComfyUI reads them at import.
    """
    import torch

    if "comfy.model_management" not in sys.modules:
        d = Path(comfyui_dir or os.environ.get("COMFYUI_DIR") or COMFYUI_DIR)
        if not (d / "comfy").is_dir():
            raise SystemExit(f"P3S: --comfyui-dir / $COMFYUI_DIR must name a ComfyUI checkout (with comfy/ in it); "
                             f"got {str(d)!r}")
        if str(d.resolve()) not in sys.path:
            sys.path.insert(0, str(d.resolve()))
        import comfy.options
        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args
        if cpu or (cpu is None and not torch.cuda.is_available()):
            args.cpu = True
        for name, value in (args_overrides or {}).items():
            setattr(args, name, value)
        if "LOCAL_RANK" in os.environ and torch.cuda.is_available() and not args.cpu:
            args.cuda_device = None
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    import comfy.model_management  # noqa: F401
    return sys.modules["comfy.model_management"]


def comfy_nodes() -> ModuleType:
    """ComfyUI's own ``nodes`` module (the custom-node loader lives there)."""
    import utils.extra_config  # noqa: F401  (ComfyUI's import-order quirk: before `nodes`)
    import nodes
    return nodes


def load_custom_node(path: str | os.PathLike) -> None:
    """Load one custom-node folder with ComfyUI's loader; a folder that fails to import is an error."""
    path = Path(path)
    if not (path / "__init__.py").is_file() and path.suffix != ".py":
        raise SystemExit(f"P3S: --custom-node {str(path)!r} is not a custom-node folder (no __init__.py in it)")
    result = comfy_nodes().load_custom_node(str(path))
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    if not result:
        raise SystemExit(f"P3S: --custom-node {str(path)!r} failed to load; its import error is in the log above")


def _loaded_by_comfyui(mod: ModuleType) -> bool:
    # ComfyUI's loader names a custom-node package after its folder path ("." -> "_x_").
    return mod.__name__ == os.path.dirname(mod.__file__).replace(".", "_x_")


def load_pack() -> ModuleType:
    """This pack as a package: the module ComfyUI loaded if there is one (pytest, collecting the repo,
    imports it under another name too), else any already imported, else imported as ``p3s_pack``."""
    init = os.path.realpath(REPO / "__init__.py")
    found = [m for m in list(sys.modules.values())
             if getattr(m, "__file__", None) and os.path.realpath(m.__file__) == init]
    if found:
        return next((m for m in found if _loaded_by_comfyui(m)), found[0])
    spec = importlib.util.spec_from_file_location("p3s_pack", init, submodule_search_locations=[str(REPO)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["p3s_pack"] = mod
    spec.loader.exec_module(mod)
    return mod


def pack_module(dotted: str, pack: ModuleType | None = None) -> ModuleType:
    """A submodule of the pack, e.g. ``pack_module("nodes.patch")``."""
    return importlib.import_module((pack or load_pack()).__name__ + "." + dotted)


class InProcessHost:
    """ComfyUI imported into this process (CPU), the extra custom nodes and the pack loaded by its loader."""

    def __init__(self, base: Path, custom_nodes: Sequence[Path] = (TINY_REGISTRAR,)):
        self.base = Path(base)
        layout = make_layout(self.base, custom_nodes)
        import_comfy(COMFYUI_DIR, cpu=True)
        from comfy.cli_args import args
        args.base_directory = str(self.base)
        import folder_paths
        folder_paths.set_output_directory(str(self.base / "output"))
        folder_paths.set_input_directory(str(self.base / "input"))
        folder_paths.set_temp_directory(str(self.base / "temp"))
        import utils.extra_config
        utils.extra_config.load_extra_path_config(str(layout["yaml"]))
        for kind in ("checkpoints", "clip_vision"):
            folder_paths.add_model_folder_path(kind, str(self.base / "models" / kind))
        nodes = comfy_nodes()
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        for link in layout["custom_nodes"][1:]:
            load_custom_node(link)
        before = set(nodes.NODE_CLASS_MAPPINGS)
        if not asyncio.run(nodes.load_custom_node(str(layout["custom_nodes"][0]))):
            raise RuntimeError("P3S pack failed to import in the in-process host (see log above)")
        self.pack_nodes = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
        self.nodes = nodes
        self.pack_module = next(m for m in list(sys.modules.values())
                                if getattr(m, "__file__", None) == str(layout["custom_nodes"][0] / "__init__.py"))
        self.folder_paths = folder_paths
        from . import tiny_models
        self.tiny = tiny_models

    def pack(self, dotted: str) -> ModuleType:
        """A submodule of the loaded pack, e.g. host.pack('nodes.patch')."""
        return pack_module(dotted, self.pack_module)

    def run_prompt(self, prompt: dict) -> dict:
        """Validate and execute an API-format prompt; returns {node_id: ui outputs}; raises on error."""
        import execution
        msgs = []

        class _Server:
            client_id = None
            last_node_id = None
            last_prompt_id = None
            sockets_metadata = {}

            def send_sync(self, event, data, sid=None):
                msgs.append((event, data))

            def queue_updated(self):
                pass

        pid = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(pid, prompt, None))
        if not valid[0]:
            raise AssertionError(f"prompt failed validation: {valid[1]} {json.dumps(valid[3], default=str)[:2000]}")
        # cache_args as main.py passes them (ComfyUI 0.3.75 reads cache_args["ram"] after every node)
        ex = execution.PromptExecutor(_Server(), cache_type=False, cache_args={"lru": 0, "ram": 0})
        ex.execute(prompt, pid, {"client_id": "t"}, valid[2])
        if not ex.success:
            errs = [d for e, d in msgs if e == "execution_error"]
            msg = errs[0]["exception_message"] if errs else str(msgs[-3:])
            raise ExecutionFailed(msg, errs[0] if errs else {})
        return ex.history_result["outputs"]


__all__ = ["import_comfy", "comfy_nodes", "load_custom_node", "load_pack", "pack_module", "InProcessHost",
           "PACK_NAME"]
