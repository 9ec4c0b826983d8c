"""Real ComfyUI host for tests: in-process (node logic) and as a server on 127.0.0.1 (workflows, routes, UI).

The host is the ComfyUI that scripts/setup_host.sh installs ($P3S_HOST_DIR/ComfyUI), or the checkout
named by $COMFYUI_DIR.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
PACK_NAME = "ComfyUI-P3S"
HOST_DIR = Path(os.environ.get("P3S_HOST_DIR", Path.home() / ".cache" / "p3s" / "host"))
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", HOST_DIR / "ComfyUI"))


def make_layout(base: Path) -> dict:
    """A ComfyUI base directory with the pack and the tiny-model registrar as custom nodes."""
    for sub in ("custom_nodes", "models/checkpoints", "models/clip_vision", "models/p3s", "input", "output",
                "temp", "user", "extra/p3s_extra"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_NAME, REPO), ("p3s_tiny_registrar", SUPPORT / "registrar")):
        link = base / "custom_nodes" / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    yaml = base / "extra_model_paths.yaml"
    # A user-style extra path for adapters: the pack must list files from it too.
    yaml.write_text(f"p3s_test:\n  base_path: {base / 'extra'}\n  p3s: p3s_extra\n")
    return {"base": base, "yaml": yaml}


class InProcessHost:
    """ComfyUI imported into the test process, with the pack loaded by ComfyUI's own custom-node loader."""

    def __init__(self, base: Path):
        self.base = base
        layout = make_layout(base)
        sys.path.insert(0, str(COMFYUI_DIR))
        import comfy.options
        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args
        args.cpu = True
        args.base_directory = str(base)
        import folder_paths
        folder_paths.set_output_directory(str(base / "output"))
        folder_paths.set_input_directory(str(base / "input"))
        folder_paths.set_temp_directory(str(base / "temp"))
        import utils.extra_config  # must precede `import nodes` (ComfyUI's own import-order quirk)
        utils.extra_config.load_extra_path_config(str(layout["yaml"]))
        for kind in ("checkpoints", "clip_vision"):
            folder_paths.add_model_folder_path(kind, str(base / "models" / kind))
        import nodes
        sys.path.insert(0, str(SUPPORT))
        import tiny_models
        tiny_models.register()
        self.tiny = tiny_models
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        before = set(nodes.NODE_CLASS_MAPPINGS)
        ok = asyncio.run(nodes.load_custom_node(str(base / "custom_nodes" / PACK_NAME)))
        if not ok:
            raise RuntimeError("P3S pack failed to import in the in-process host (see log above)")
        self.pack_nodes = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
        self.nodes = nodes
        self.pack_module = sys.modules[next(k for k, m in sys.modules.items()
                                            if getattr(m, "__file__", None) == str(base / "custom_nodes" / PACK_NAME / "__init__.py"))]
        self.folder_paths = folder_paths

    def pack(self, dotted: str):
        """A submodule of the loaded pack, e.g. host.pack('nodes.patch')."""
        import importlib
        return importlib.import_module(self.pack_module.__name__ + "." + dotted)

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
        ex = execution.PromptExecutor(_Server(), cache_type=False)
        ex.execute(prompt, pid, {"client_id": "t"}, valid[2])
        if not ex.success:
            errs = [d for e, d in msgs if e == "execution_error"]
            msg = errs[0]["exception_message"] if errs else str(msgs[-3:])
            raise ExecutionFailed(msg, errs[0] if errs else {})
        return ex.history_result["outputs"]


class ExecutionFailed(RuntimeError):
    def __init__(self, message: str, detail: dict):
        super().__init__(message)
        self.detail = detail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real ComfyUI server subprocess on 127.0.0.1 with the pack in its custom_nodes."""

    def __init__(self, base: Path, extra_args: tuple = ()):
        self.base = base
        layout = make_layout(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(base), "--extra-model-paths-config", str(layout["yaml"]),
               "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               "--preview-method", "none", *extra_args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited early:\n{self.log()[-4000:]}")
            try:
                self.get("/object_info/CheckpointLoaderSimple")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI server not ready after {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body=None, headers=None, raw: bool = False):
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers or ({"Content-Type": "application/json"} if data else {}))
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                payload = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            payload, status = e.read(), e.code
        if raw:
            return status, payload
        try:
            return status, json.loads(payload or b"null")
        except json.JSONDecodeError:
            return status, payload.decode(errors="replace")

    def get(self, path: str):
        status, body = self.request("GET", path)
        if status != 200:
            raise urllib.error.URLError(f"GET {path} -> {status}")
        return body

    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        status, body = self.request("POST", "/prompt", {"prompt": prompt, "client_id": "p3s-tests",
                                                        "extra_data": extra_data or {}})
        if status != 200:
            raise AssertionError(f"/prompt refused ({status}): {json.dumps(body)[:3000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 240) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"]["status_str"] != "success":
                    msgs = entry["status"].get("messages", [])
                    err = [m[1] for m in msgs if m[0] == "execution_error"]
                    raise ExecutionFailed(err[0]["exception_message"] if err else str(msgs), err[0] if err else {})
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} not done after {timeout}s\n{self.log()[-3000:]}")

    def run(self, prompt: dict, timeout: float = 240) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def view(self, image: dict) -> bytes:
        from urllib.parse import urlencode
        status, payload = self.request("GET", "/view?" + urlencode(
            {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image["type"]}), raw=True)
        assert status == 200, f"/view failed: {status}"
        return payload

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def copy_into_input(base: Path, src: Path, name: str | None = None) -> str:
    dst = base / "input" / (name or src.name)
    shutil.copy(src, dst)
    return dst.name
