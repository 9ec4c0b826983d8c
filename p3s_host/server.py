"""A real ComfyUI server on 127.0.0.1 with this pack in its ``custom_nodes``, for the demo, benches and tests.

``make_layout`` writes a ComfyUI base directory (custom_nodes with the pack and any extra custom-node
folders symlinked, models/, input/, output/, temp/, user/ and an extra_model_paths.yaml);
``Server`` starts ``main.py`` on a free port with it and offers queue/wait/view helpers. The ComfyUI
used is ``COMFYUI_DIR`` (default: the host that scripts/setup_host.sh installs in ``P3S_HOST_DIR``).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-P3S"
HOST_DIR = Path(os.environ.get("P3S_HOST_DIR", Path.home() / ".cache" / "p3s" / "host"))
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", HOST_DIR / "ComfyUI"))
TINY_REGISTRAR = Path(__file__).resolve().parent / "tiny_registrar"
MODEL_KINDS = ("checkpoints", "clip_vision", "p3s", "vae", "loras", "diffusion_models", "text_encoders",
               "clip", "controlnet", "embeddings", "upscale_models")


class ExecutionFailed(RuntimeError):
    """A prompt ran and failed; ``detail`` is ComfyUI's execution_error message."""

    def __init__(self, message: str, detail: dict):
        super().__init__(message)
        self.detail = detail


def make_layout(base: Path, custom_nodes: Sequence[Path] = (TINY_REGISTRAR,)) -> dict:
    """A ComfyUI base directory with the pack and ``custom_nodes`` (folders) linked into custom_nodes/.

    Returns {"base": base, "yaml": the extra_model_paths.yaml that adds a user-style ``p3s`` folder,
    "custom_nodes": [the linked folders, pack first]}.
    """
    for sub in ("custom_nodes", "models/checkpoints", "models/clip_vision", "models/p3s", "input", "output",
                "temp", "user", "extra/p3s_extra"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    linked = []
    for name, target in [(PACK_NAME, REPO)] + [(Path(p).name, Path(p)) for p in custom_nodes]:
        link = base / "custom_nodes" / name
        if not link.exists():
            link.symlink_to(Path(target).resolve(), target_is_directory=True)
        elif link.resolve() != Path(target).resolve():
            raise ValueError(f"two custom-node folders are both named {name!r}: {link.resolve()} and {target}")
        linked.append(link)
    yaml = base / "extra_model_paths.yaml"
    # A user-style extra path for adapters: the pack must list files from it too.
    yaml.write_text(f"p3s_test:\n  base_path: {base / 'extra'}\n  p3s: p3s_extra\n")
    return {"base": base, "yaml": yaml, "custom_nodes": linked}


def models_yaml(path: Path, models: Path) -> Path:
    """An extra_model_paths.yaml at ``path`` that adds a ComfyUI ``models`` folder (its usual sub-folders)."""
    kinds = "".join(f"  {k}: {k}\n" for k in MODEL_KINDS)
    path.write_text(f"p3s_user_models:\n  base_path: {Path(models).resolve()}\n{kinds}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_into_input(base: Path, src: Path, name: str | None = None) -> str:
    dst = base / "input" / (name or src.name)
    shutil.copy(src, dst)
    return dst.name


class Server:
    """A real ComfyUI server subprocess on 127.0.0.1 with the pack (and ``custom_nodes``) installed.

    ``models``: a ComfyUI models folder to use besides ``base/models``; ``cpu``: run with --cpu.
    """

    def __init__(self, base: Path, *, custom_nodes: Sequence[Path] = (TINY_REGISTRAR,), models: Path | None = None,
                 cpu: bool = True, extra_args: Sequence[str] = (), timeout: float = 120,
                 comfyui_dir: Path = COMFYUI_DIR):
        self.base = Path(base)
        layout = make_layout(self.base, custom_nodes)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        cmd = [sys.executable, "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.base),
               "--extra-model-paths-config", str(layout["yaml"]),
               "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               "--preview-method", "none", *extra_args]
        if models is not None:
            cmd += ["--extra-model-paths-config", str(models_yaml(self.base / "user_models.yaml", models))]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfyui_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
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
        if not self._log.closed:
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
        status, body = self.request("POST", "/prompt", {"prompt": prompt, "client_id": "p3s-host",
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
        status, payload = self.request("GET", "/view?" + urlencode(
            {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image["type"]}), raw=True)
        if status != 200:
            raise AssertionError(f"/view failed: {status}")
        return payload

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
