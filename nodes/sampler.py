"""P3S Sampler: KSampler with the P3S timestep weight schedule."""
from __future__ import annotations

import importlib

import comfy.samplers
from comfy_api.latest import io

from ..p3s_core.schedule import PRESETS, WeightSchedule
from .patch import SHAPE_KEY, find_patches
from .types import CATEGORY


class P3SSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="P3SSampler",
            display_name="P3S Sampler",
            category=CATEGORY,
            description="KSampler for a P3S-patched MODEL, with a timestep schedule for the injection weight: "
                        "low early lets the prompt set the layout, high late restores the subject's detail.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL output of P3S Apply."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image"),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Combo.Input("schedule", options=list(PRESETS), default="ramp_up",
                               tooltip="Shape of the injection weight over sampling, inside P3S Apply's "
                                       "start/end window: constant, ramp_up, ramp_down, cosine (eased ramp up), "
                                       "step (low, then high from the middle)."),
                io.Float.Input("weight_low", default=0.25, min=0.0, max=3.0, step=0.05,
                               tooltip="Low end of the schedule, as a multiple of P3S Apply's weight."),
                io.Float.Input("weight_high", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="High end of the schedule, as a multiple of P3S Apply's weight."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise, schedule, weight_low, weight_high) -> io.NodeOutput:
        if not find_patches(model):
            raise ValueError("P3S: model: this MODEL has no P3S patch, so the schedule would do nothing. "
                             "Connect the MODEL output of P3S Apply (or use the stock KSampler)")
        # The curve; each P3S patch lays it over its own weight and window (WeightSchedule.shaped_by).
        shape = WeightSchedule.curve(schedule, weight_low, weight_high)
        m = model.clone()
        m.model_options.setdefault("transformer_options", {})[SHAPE_KEY] = shape
        # ComfyUI's own KSampler path: same noise, progress bar, previews and interrupt handling.
        common_ksampler = importlib.import_module("nodes").common_ksampler
        return io.NodeOutput(*common_ksampler(m, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                              latent_image, denoise=denoise))
