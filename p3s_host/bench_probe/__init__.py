"""Bench probe: a custom node folder (no nodes) that times every sampling inside a ComfyUI server.

Installed only by ``bench/overhead.py`` in its own server. It wraps ``comfy.sample.sample`` (what KSampler
and the other stock samplers call) so each sampling's wall time and the peak memory it *added* are
measured in the server process itself, around the sampler and nothing else (no loading, no VAE, no
HTTP). ``GET /p3s_bench/samplings`` returns the records, ``POST /p3s_bench/clear`` empties them.

Added peak memory: on CUDA ``max_memory_allocated`` minus ``memory_allocated`` before the sampling; on
CPU the kernel's peak-RSS counter (VmHWM, reset through /proc/self/clear_refs) minus VmRSS before it,
which counts every allocation (torch and not) but only what glibc really maps: the bench starts the
server with a fixed mmap threshold so freed tensors leave RSS at once.
"""
from __future__ import annotations

import logging
import time

import torch

import comfy.model_management
import comfy.sample

log = logging.getLogger("P3S")
RECORDS: list[dict] = []  # bench tooling in the bench's own server; never loaded with the pack


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset VmHWM to the current RSS


def _timed(sample):
    def timed_sample(model, noise, *args, **kwargs):
        cuda = comfy.model_management.get_torch_device().type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            _reset_peak_rss()
            before = _status_kib("VmRSS") * 1024
        t0 = time.perf_counter()
        out = sample(model, noise, *args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
        RECORDS.append({"seconds": seconds, "added_peak_bytes": int(peak - before), "latent": list(noise.shape),
                        "unet_bytes": int(model.model_size()), "device": "cuda" if cuda else "cpu",
                        "unet_dtype": str(model.model_dtype())})
        return out
    timed_sample.p3s_bench = True
    return timed_sample


def _routes() -> None:
    from aiohttp import web
    from server import PromptServer
    routes = PromptServer.instance.routes

    @routes.get("/p3s_bench/samplings")
    async def samplings(request):
        return web.json_response(RECORDS)

    @routes.post("/p3s_bench/clear")
    async def clear(request):
        RECORDS.clear()
        return web.json_response({"cleared": True})


if not getattr(comfy.sample.sample, "p3s_bench", False):
    comfy.sample.sample = _timed(comfy.sample.sample)
    _routes()
NODE_CLASS_MAPPINGS: dict = {}
