"""The training command as users run it (a subprocess of scripts/train_adapter.py on the tiny models): a bad
dataset is refused before step 1 with every bad file listed, and SIGINT saves a resumable checkpoint.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import scenes
from host import COMFYUI_DIR, TINY_REGISTRAR

REPO = Path(__file__).resolve().parents[1]
SIDE = 64


@pytest.fixture(scope="module")
def files(host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer")
    return {"tmp": tmp, "ckpt": host.base / "models" / "checkpoints" / "tiny_sd15.safetensors",
            "cv": host.base / "models" / "clip_vision" / "tiny_clip_vision.safetensors",
            "training": host.pack("p3s_core.training"), "adapter": host.pack("p3s_core.adapter")}


def _command(files, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "train_adapter.py"), "--custom-node", str(TINY_REGISTRAR), "--cpu",
            "--checkpoint", str(files["ckpt"]), "--clip-vision", str(files["cv"]), "--data", str(data),
            "--output", str(out), "--batch-size", "1", "--rank", "2", "--resolution", str(SIDE), "--acl-weight", "0",
            "--selection-features", "builtin", "--no-progress", *extra]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", COMFYUI_DIR=str(COMFYUI_DIR), PYTHONUNBUFFERED="1")


def test_a_bad_dataset_is_refused_before_step_one_listing_every_bad_file(files):
    data = scenes.write_dataset(files["tmp"] / "bad_data", range(30), SIDE)
    (data / "images" / "scene3.png").write_bytes(b"")                                          # 0 bytes
    png = (data / "images" / "scene11.png").read_bytes()
    (data / "images" / "scene11.png").write_bytes(png[: len(png) // 3])                        # truncated
    (data / "captions" / "scene17.txt").write_bytes(b"a dog \xff\xfe on the grass")           # not UTF-8
    (data / "masks" / "scene23.png").unlink()
    (data / "points").mkdir()
    (data / "points" / "scene23.json").write_text('{"width": 64, "height": 64, "positive": [[1, 2, 3]]}')
    out = files["tmp"] / "bad" / "bad.safetensors"
    proc = subprocess.run(_command(files, data, out, "--steps", "300", "--checkpoint-every", "1"),
                          capture_output=True, text=True, timeout=300, env=_env())
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert f"P3S: dataset {data}: 4 problem(s), all listed" in log, log[-3000:]
    for name in ("images/scene3.png is not a readable image", "images/scene11.png is not a readable image",
                 "captions/scene17.txt is not UTF-8 text", "points/scene23.json: points: positive[0]"):
        assert name in log, (name, log[-3000:])
    assert "Traceback" not in log and "P3S: step" not in log
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing trained, nothing written


def test_sigint_saves_a_resumable_checkpoint_of_the_steps_since_the_last_one(files):
    data = scenes.write_dataset(files["tmp"] / "data", range(4), SIDE)
    out = files["tmp"] / "sigint" / "sigint.safetensors"
    # --checkpoint-every 0: no periodic checkpoint, so any checkpoint on disk was written by the interrupt
    proc = subprocess.Popen(_command(files, data, out, "--steps", "400", "--checkpoint-every", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    lines, seen = [], threading.Event()
    last_logged = [0]

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"P3S: step (\d+)/400", line)
            if m:
                last_logged[0] = int(m.group(1))
                if last_logged[0] >= 6:
                    seen.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(240), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    log = "".join(lines)
    assert rc == 130, log[-3000:]
    saved = sorted(out.parent.glob("sigint.step*.pt"))
    assert len(saved) == 1, (saved, log[-3000:])
    step = int(re.search(r"step(\d+)", saved[0].name).group(1))
    assert last_logged[0] <= step < 400  # the interrupted step finished and was saved, nothing more ran
    assert f"Continue with --resume {saved[0]}" in log and "Traceback" not in log
    assert not out.exists()  # the adapter of a finished run is not written for an interrupted one
    # resumable: the checkpoint restores every step's history into an adapter of the same shape
    spec = files["adapter"].AdapterSpec.from_metadata(torch.load(saved[0], weights_only=True)["spec"])
    adapter = files["adapter"].P3SAdapter(spec)
    resumed_step, history, config = files["training"].load_checkpoint(saved[0], adapter, None, None)
    assert resumed_step == step and [h["step"] for h in history] == list(range(1, step + 1))
    assert config["steps"] == 400
    assert abs(float(adapter.gate.detach())) > 0  # trained weights, not a fresh adapter


class _Touches:
    """A pickle that would create a file if anything ever unpickled it with code allowed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_pickle_with_code_without_pytorchs_advice(files):
    data = scenes.write_dataset(files["tmp"] / "resume_data", range(2), SIDE)
    marker = files["tmp"] / "code_ran"
    evil = files["tmp"] / "evil.step000010.pt"
    torch.save({"format": "p3s-train-checkpoint", "step": 10, "payload": _Touches(marker)}, evil)
    out = files["tmp"] / "resume" / "resume.safetensors"
    proc = subprocess.run(_command(files, data, out, "--steps", "20", "--resume", str(evil)),
                          capture_output=True, text=True, timeout=300, env=_env())
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "P3S: --resume: evil.step000010.pt holds Python objects" in log and "never runs code" in log, log[-3000:]
    assert "weights_only" not in log and "Traceback" not in log
    assert not marker.exists() and not out.exists()
