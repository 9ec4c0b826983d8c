"""The ComfyUI side of Multi-layers Condition Injection: the reference pass and the attention read.

One ``P3SPatch`` per P3S Apply node. It is installed on a *clone* of the MODEL with
- an APPLY_MODEL wrapper (keyed, stackable) that, at each model call where the schedule weight is
  above 0, runs the reference pass (reference latent noised to the current sigma, frozen U-Net) and
  then the normal pass in "read" mode;
- an attn1 list patch that writes the subject tokens to the bank in the reference pass and appends
  them to the self-attention keys/values in the read pass;
- an attention override (chained with any existing one) that gives the appended tokens their
  log(weight) bias;
- an OUTER_SAMPLE wrapper that frees the bank when sampling ends, also on error or interrupt.
Other packs' attn1/attn2 patches and replaces keep working: nothing here owns a single slot.
"""
from __future__ import annotations

import copy
import logging
import uuid
from dataclasses import dataclass

import torch

import comfy.patcher_extension as pe

from ..p3s_core import injection
from ..p3s_core.schedule import WeightSchedule

log = logging.getLogger("P3S")

WRAPPER_PREFIX = "p3s"
SCHEDULE_KEY = "p3s_schedule"  # transformer_options key set by P3S Sampler: (preset, low, high)
MODES = ("per_step", "cached")


@dataclass
class _Pending:
    owner: str
    key: str
    offset: int
    queries: int
    bias: torch.Tensor  # [B, N]


# Appended-token segments waiting for the attention call of the same block (one sampling at a time
# runs in a ComfyUI process, so a module-level list is enough).
_PENDING: list[_Pending] = []


def _attention_override(previous):
    def override(func, q, k, v, heads, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        key = injection.layer_key(to["block"], to.get("block_index", 0)) if to.get("block") else None
        mine = [p for p in _PENDING if p.key == key and p.queries == q.shape[1]
                and p.offset + p.bias.shape[1] <= k.shape[1]] if key and not kwargs.get("skip_reshape") else []
        if mine and q.shape[0] == mine[0].bias.shape[0]:
            for p in mine:
                _PENDING.remove(p)
            if len(mine) == 1:
                p = mine[0]
                return injection.biased_attention(q, k, v, heads, p.offset, p.bias)
            # several P3S nodes appended to this block: combine their bias segments
            full = torch.zeros(q.shape[0], k.shape[1], dtype=q.dtype, device=q.device)
            for p in mine:
                full[:, p.offset: p.offset + p.bias.shape[1]] = p.bias.to(q.dtype)
            return injection.biased_attention(q, k, v, heads, 0, full)
        if previous is not None:
            return previous(func, q, k, v, heads, *args, **kwargs)
        return func(q, k, v, heads, *args, **kwargs)
    override.p3s = True
    return override


def progress_from_sigma(model_sampling, sigma: float) -> float:
    """Sampling progress 0..1 of a sigma, the inverse of ``percent_to_sigma`` (discrete models)."""
    t = float(model_sampling.timestep(torch.tensor([sigma], dtype=torch.float32))[0])
    last = max(1, model_sampling.sigmas.shape[0] - 1)
    return min(max(1.0 - t / last, 0.0), 1.0)


class P3SPatch:
    def __init__(self, *, reference_latent: torch.Tensor, mask: torch.Tensor, weight: float,
                 start_percent: float, end_percent: float, mode: str = "per_step",
                 uncond_sees_reference: bool = False, adapter=None, subject_tokens=None,
                 subject_valid=None):
        if mode not in MODES:
            raise ValueError(f"P3S: reference_mode={mode!r} is unknown: use one of {', '.join(MODES)}")
        self.id = f"{WRAPPER_PREFIX}_{uuid.uuid4().hex[:8]}"
        self.reference_latent = reference_latent  # [R, C, h, w], already process_latent_in'd
        self.mask = mask  # [R, h, w] subject mask at latent resolution
        self.schedule = WeightSchedule("constant", 0.0, weight, start_percent, end_percent)
        self.mode = mode
        self.uncond_sees_reference = uncond_sees_reference
        self.adapter = adapter
        self.subject_tokens = subject_tokens  # [R, N, clip_width] masked CLIP tokens (adapter mode)
        self.subject_valid = subject_valid
        self.bank = injection.ReferenceBank()
        self._moved = None  # (device, adapter copy) when the MODEL runs on another device
        self._reset_run()

    # Patches live in deep-copied model_options; sharing one object keeps the bank and state single.
    def __deepcopy__(self, memo):
        return self

    def _reset_run(self) -> None:
        self.bank.clear()
        self._bank_sigma = None
        self._noise = None
        self._seed = 0
        self._keep: dict = {}
        self._weight = 0.0
        self._rows = None
        _PENDING.clear()

    def adapter_on(self, device):
        """The adapter on ``device``: itself when it is already there (training: gradients reach it),
        else a cached copy (the loaded adapter is a cached node output and is never moved in place).
        Its dtype is kept (fp32): ``apply_delta``/``reference_context`` cast activations to it and back."""
        a = self.adapter
        if a is None:
            return None
        p = next(a.parameters(), None)
        if p is None or p.device == torch.device(device):
            return a
        if self._moved is None or self._moved[0] != torch.device(device):
            moved = copy.deepcopy(a).to(device)
            moved.requires_grad_(False)
            self._moved = (torch.device(device), moved)
        return self._moved[1]

    # ---- installation -------------------------------------------------------------------------
    def install(self, model) -> None:
        model.set_model_attn1_patch(self.attn1_patch)
        model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, self.id, self.apply_model_wrapper)
        model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, self.id, self.outer_sample_wrapper)

    # ---- schedule -----------------------------------------------------------------------------
    def weight_at(self, model_sampling, sigma: float, transformer_options: dict) -> tuple[float, float]:
        """(progress, weight) at ``sigma``; the window is checked on sigmas like ComfyUI's own nodes."""
        s = self.schedule
        progress = progress_from_sigma(model_sampling, sigma)
        s_start = float(model_sampling.percent_to_sigma(s.start_percent))
        s_end = float(model_sampling.percent_to_sigma(s.end_percent))
        if not (s_end <= sigma <= s_start) or s.start_percent >= s.end_percent:
            return progress, 0.0
        override = transformer_options.get(SCHEDULE_KEY)
        sched = s if override is None else WeightSchedule(override[0], override[1], override[2],
                                                          s.start_percent, s.end_percent).scaled(s.high)
        p = min(max(progress, s.start_percent), s.end_percent)
        return progress, sched.weight(p)

    # ---- wrappers -----------------------------------------------------------------------------
    def outer_sample_wrapper(self, executor, *args, **kwargs):
        self._reset_run()
        seed = kwargs.get("seed", args[7] if len(args) > 7 else 0)
        self._seed = int(seed or 0)
        try:
            return executor(*args, **kwargs)
        finally:
            self._reset_run()  # frees the bank after sampling, errors and interrupts alike

    def apply_model_wrapper(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                            transformer_options={}, **kwargs):
        base = executor.class_obj
        ms = base.model_sampling
        sigma = float(t.flatten()[0])
        progress, weight = self.weight_at(ms, sigma, transformer_options)
        recorder = transformer_options.get("p3s_record")
        if recorder is not None:
            recorder.append({"patch": self.id, "sigma": sigma, "progress": progress, "weight": weight})
        refs = self.reference_latent.shape[0]
        if weight <= 0:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        cou = list(transformer_options.get("cond_or_uncond", [0]))
        rows = injection.reference_rows(cou, x.shape[0], refs, self.uncond_sees_reference)
        if bool((rows < 0).all()):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        self._ensure_bank(base, x, t, c_concat, c_crossattn, transformer_options, kwargs, cou)
        self._weight, self._rows = weight, rows
        to = dict(transformer_options)
        to["p3s"] = dict(to.get("p3s", {}), **{self.id: "read"})
        previous = to.get("optimized_attention_override")
        if not getattr(previous, "p3s", False):
            to["optimized_attention_override"] = _attention_override(previous)
        try:
            return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)
        finally:
            _PENDING.clear()
            if self.mode == "per_step":
                self.bank.clear()

    def _ensure_bank(self, base, x, t, c_concat, c_crossattn, to, kwargs, cou) -> None:
        sigma = float(t.flatten()[0])
        if len(self.bank) and (self.mode == "cached" or self._bank_sigma == sigma):
            return
        ms = base.model_sampling
        refs = self.reference_latent.shape[0]
        per_chunk = x.shape[0] // max(len(cou), 1)
        chunk = cou.index(0) if 0 in cou else 0  # the reference pass reads the positive prompt
        src = torch.arange(refs) + chunk * per_chunk if refs > 1 else torch.tensor([chunk * per_chunk])
        latent = self.reference_latent.to(x.device, x.dtype)
        if self._noise is None or self._noise.shape != latent.shape:
            g = torch.Generator().manual_seed(self._seed + 0x5033)
            self._noise = torch.randn(latent.shape, generator=g).to(x.device, x.dtype)
        if self.mode == "cached":
            ref_sigma = torch.full((refs,), float(ms.sigma_min), device=x.device)
        else:
            ref_sigma = torch.full((refs,), sigma, device=x.device)
        x_ref = ms.noise_scaling(ref_sigma, self._noise, latent)
        src = src.to(x.device)
        ctx = c_crossattn.index_select(0, src) if c_crossattn is not None else None
        adapter = self.adapter_on(x.device)
        if adapter is not None and ctx is not None:
            ctx = adapter.reference_context(ctx, self.subject_tokens.to(ctx.device),
                                            self.subject_valid.to(ctx.device))
        concat = c_concat.index_select(0, src) if c_concat is not None else None
        extra = {k: (v.index_select(0, src) if torch.is_tensor(v) and v.shape[:1] == x.shape[:1] else v)
                 for k, v in kwargs.items()}
        ref_to = dict(to)
        ref_to["p3s"] = {self.id: "write"}
        ref_to["cond_or_uncond"] = [0]
        self.bank.clear()
        # The original apply function: the reference pass skips other packs' model wrappers and
        # ControlNets, which belong to the image being generated, not to the reference.
        base._apply_model(x_ref, ref_sigma, concat, ctx, None, ref_to, **extra)
        self._bank_sigma = sigma

    # ---- attention patch ----------------------------------------------------------------------
    def _keep_for(self, grid: tuple[int, int], device) -> torch.Tensor:
        k = (grid, str(device))
        if k not in self._keep:
            self._keep[k] = injection.mask_to_tokens(self.mask, grid).to(device)
        return self._keep[k]

    def attn1_patch(self, n, context, value, extra_options):
        mode = extra_options.get("p3s", {}).get(self.id)
        if mode is None:
            return n, context, value
        key = injection.layer_key(extra_options["block"], extra_options.get("block_index", 0))
        if mode == "write":
            adapter = self.adapter_on(n.device)
            if adapter is not None and adapter.has_layer(key):
                same = context is n
                n = adapter.apply_delta(key, n)
                if same:
                    context = value = n
            shape = extra_options["original_shape"]
            grid = injection.layer_grid(n.shape[1], shape[-2], shape[-1])
            tokens, valid = injection.gather_tokens(n, self._keep_for(grid, n.device))
            self.bank.write(key, tokens, valid)
            return n, context, value
        entry = self.bank.read(key)
        if entry is None or self._rows is None or self._rows.shape[0] != n.shape[0]:
            return n, context, value
        tokens, valid = entry
        bias = injection.reference_bias(valid, self._rows, self._weight, torch.float32)
        stale = [p for p in _PENDING if p.key != key]
        for p in stale:
            _PENDING.remove(p)
        _PENDING.append(_Pending(self.id, key, context.shape[1], n.shape[1], bias))
        rows = self._rows.to(n.device)
        return n, injection.append_tokens(context, tokens, rows), injection.append_tokens(value, tokens, rows)


def find_patches(model) -> list[str]:
    """Ids of the P3S patches installed on a MODEL (empty when it is not P3S-patched)."""
    wrappers = getattr(model, "wrappers", {}).get(pe.WrappersMP.APPLY_MODEL, {})
    return [k for k in wrappers if str(k).startswith(WRAPPER_PREFIX + "_")]
