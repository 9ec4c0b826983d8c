"""The ComfyUI side of Multi-layers Condition Injection: the reference pass and the attention read.

One ``P3SPatch`` per P3S Apply node: the immutable configuration (subject-only reference latent, its
mask, the weight schedule, the adapter). ``install`` puts it on a *clone* of the MODEL as
- the attn1 list patch (the object itself is the patch): it writes the subject tokens to the bank in
  the reference pass and appends them to the self-attention keys/values in the read pass;
- an APPLY_MODEL wrapper (keyed, stackable) that, at each model call where the schedule weight is above
  0, runs the reference pass (reference latent noised to the current sigma) and then the normal pass in
  "read" mode, with the attention override of nodes/attention.py giving the appended tokens their bias;
- an OUTER_SAMPLE wrapper that makes the sampling's ``P3SRun`` (bank, reference noise, the schedule on
  this model's sigmas) and frees it when sampling ends, also on error or interrupt;
- an attachment (``find_patches``) so other nodes find the P3S patches of a MODEL.
Everything that changes while sampling lives in the run, reached through transformer_options (ComfyUI's
own pattern, see comfy_extras/nodes_easycache.py): two samplings, or two P3S nodes, never share state.
Other packs' attn1/attn2 patches and replaces keep working: nothing here owns a single slot.
See docs/design.md ("From click to attention").
"""
from __future__ import annotations

import copy
import functools
import inspect
import logging
import uuid

import torch

import comfy.model_patcher
import comfy.patcher_extension as pe

from ..p3s_core import injection
from ..p3s_core.reference_scale import ReferenceLevels
from ..p3s_core.schedule import SigmaSchedule, WeightSchedule
from .attention import SEGMENTS_KEY, AppendedSegment, begin_read
from .subject_read import SubjectReadIn, SubjectReadOut

log = logging.getLogger("P3S")

MODES = ("per_step", "cached")
# The world benchmark's validation split picked cached (clicked 0.29 vs 0.16 for per_step, prompt 1.00 for
# both; README, World benchmark), and it costs one reference pass instead of one per step.
DEFAULT_MODE = "cached"
ATTACHMENT = "p3s_patches"   # ModelPatcher attachment: the tuple of P3SPatch installed on the MODEL
RUNS_KEY = "p3s_runs"        # transformer_options: {patch id: P3SRun} for the current sampling
PASS_KEY = "p3s"             # transformer_options: {patch id: "write" | "read"} for the current model call
SHAPE_KEY = "p3s_schedule"   # transformer_options: the WeightSchedule shape set by P3S Sampler


class P3SRun:
    """What one P3S patch keeps during one sampling: made by the OUTER_SAMPLE wrapper, cleared after it."""

    def __init__(self, schedule: SigmaSchedule, seed: int = 0, noise: torch.Tensor | None = None):
        self.schedule = schedule
        self.seed = int(seed or 0)
        self.noise = noise                # the reference latent's noise, fixed for the whole sampling
        self.bank = injection.ReferenceBank()
        self.bank_sigma: float | None = None
        self.keep: dict = {}              # (mask shape, grid, device) -> which tokens of a layer are subject
        self.level: int | None = None     # the reference level this sampling's latent size uses
        self.level_for: tuple | None = None
        self.weight = 0.0                 # the current model call's weight and reference rows
        self.rows: torch.Tensor | None = None
        self.subject_ctx: torch.Tensor | None = None  # the adapter's subject context (subject cross-attention)

    def reference_noise(self, like: torch.Tensor) -> torch.Tensor:
        """The reference latent's noise for this sampling (drawn on the CPU from the seed: reproducible)."""
        if self.noise is None or self.noise.shape != like.shape:
            g = torch.Generator().manual_seed(self.seed + 0x5033)
            self.noise = torch.randn(like.shape, generator=g)
        self.noise = self.noise.to(like.device, like.dtype)  # moved once, not at every model call
        return self.noise

    def keep_for(self, mask: torch.Tensor, grid: tuple[int, int], device) -> torch.Tensor:
        k = (tuple(mask.shape), grid, str(device))
        if k not in self.keep:
            self.keep[k] = injection.mask_to_tokens(mask, grid).to(device)
        return self.keep[k]

    def clear(self) -> None:
        self.bank.clear()
        self.keep.clear()
        self.noise = self.rows = self.bank_sigma = self.level = self.level_for = self.subject_ctx = None


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class P3SPatch:
    def __init__(self, *, reference_latent: torch.Tensor, mask: torch.Tensor, schedule: WeightSchedule,
                 mode: str = "per_step", uncond_sees_reference: bool = False, adapter=None, subject_tokens=None,
                 subject_valid=None, levels: ReferenceLevels | None = None):
        if mode not in MODES:
            raise ValueError(f"P3S: reference_mode={mode!r} is unknown: use one of {', '.join(MODES)}")
        self.id = f"p3s_{uuid.uuid4().hex[:8]}"
        self.reference_latent = reference_latent  # [R, C, h, w], already process_latent_in'd
        self.mask = mask  # [R, h, w] subject mask at latent resolution
        # the same reference at the sizes the reference pass may run at (P3S Apply's subject crop); one
        # level, used as given, when the caller prepared the latent itself (the trainer)
        self.levels = levels if levels is not None else ReferenceLevels.single(reference_latent, mask)
        self.schedule = schedule
        self.mode = mode
        self.uncond_sees_reference = uncond_sees_reference
        self.loaded_adapter = adapter  # as given (a cached node output, or the adapter being trained)
        self.adapter = adapter         # the same, or its copy on the device the MODEL runs on (see ``to``)
        self.subject_tokens = subject_tokens  # [R, N, clip_width] masked CLIP tokens (adapter mode)
        self.subject_valid = subject_valid
        # an adapter with a subject cross-attention also patches attn2 (nodes/subject_read.py)
        self.attn2 = (SubjectReadIn(self), SubjectReadOut(self)) \
            if adapter is not None and adapter.spec.subject_attn else None

    def __deepcopy__(self, memo):
        # Shared, not copied, by ModelPatcher.clone() (which deep-copies model_options): this object is the
        # fixed configuration of one P3S Apply, and a copy would duplicate the reference latent and the
        # adapter's weights for every clone. Everything that changes while sampling is in a P3SRun made per
        # sampling, so clones cannot see each other's state; the adapter's device placement (``to``)
        # follows the underlying model, which clones share as well.
        return self

    # ---- installation and discovery --------------------------------------------------------------
    def install(self, model) -> None:
        model.set_model_attn1_patch(self)
        if self.attn2 is not None:
            model.set_model_attn2_patch(self.attn2[0])
            model.set_model_attn2_output_patch(self.attn2[1])
        model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, self.id, self.apply_model_wrapper)
        model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, self.id, self.outer_sample_wrapper)
        model.set_attachments(ATTACHMENT, (*find_patches(model), self))

    def call_options(self, run: P3SRun, transformer_options: dict | None = None) -> dict:
        """transformer_options that run this patch in a direct ``apply_model`` call, outside a sampler
        (the trainer's forward pass): the attn1 patch, the APPLY_MODEL wrapper and ``run``."""
        to = dict(transformer_options or {})
        patches = to.get("patches", {})
        to["patches"] = {**patches, "attn1_patch": [*patches.get("attn1_patch", []), self]}
        if self.attn2 is not None:
            to["patches"]["attn2_patch"] = [*patches.get("attn2_patch", []), self.attn2[0]]
            to["patches"]["attn2_output_patch"] = [*patches.get("attn2_output_patch", []), self.attn2[1]]
        wrappers = to.get("wrappers", {})
        apply_model = {**wrappers.get(pe.WrappersMP.APPLY_MODEL, {}), self.id: [self.apply_model_wrapper]}
        to["wrappers"] = {**wrappers, pe.WrappersMP.APPLY_MODEL: apply_model}
        to[RUNS_KEY] = {**to.get(RUNS_KEY, {}), self.id: run}
        return to

    # ---- device ----------------------------------------------------------------------------------
    def to(self, device_or_dtype):
        """ComfyUI's ``model_patches_to``: keep the adapter on the device the MODEL is loaded to.

        The loaded adapter is never moved in place (it is a cached node output other graphs may use):
        another device gets a copy, made once and dropped when the MODEL returns to the adapter's own
        device. Dtype casts are ignored: the adapter stays fp32 and casts activations itself.
        """
        if self.loaded_adapter is None or isinstance(device_or_dtype, torch.dtype):
            return self
        device = torch.device(device_or_dtype)
        home = next(self.loaded_adapter.parameters()).device
        if _same_device(home, device):
            self.adapter = self.loaded_adapter
        elif not _same_device(next(self.adapter.parameters()).device, device):
            self.adapter = copy.deepcopy(self.loaded_adapter).to(device).requires_grad_(False)
        return self

    def _adapter_for(self, x: torch.Tensor):
        if self.adapter is not None and not _same_device(next(self.adapter.parameters()).device, x.device):
            self.to(x.device)  # a caller that bypassed ComfyUI's model management
        return self.adapter

    # ---- the sampling run ------------------------------------------------------------------------
    def new_run(self, model_sampling, seed: int = 0, shape: WeightSchedule | None = None,
                noise: torch.Tensor | None = None) -> P3SRun:
        """The state of one sampling; ``shape``: P3S Sampler's schedule, laid over this patch's."""
        return P3SRun(SigmaSchedule.for_model(self.schedule.shaped_by(shape), model_sampling), seed, noise)

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        guider = executor.class_obj
        seed = inspect.signature(executor.original).bind_partial(*args, **kwargs).arguments.get("seed")
        original = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        to = guider.model_options.setdefault("transformer_options", {})
        run = self.new_run(guider.model_patcher.get_model_object("model_sampling"), seed, to.get(SHAPE_KEY))
        to[RUNS_KEY] = {**to.get(RUNS_KEY, {}), self.id: run}
        try:
            return executor(*args, **kwargs)
        finally:
            run.clear()  # frees the bank after sampling, errors and interrupts alike
            guider.model_options = original

    def apply_model_wrapper(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                            transformer_options=None, **kwargs):
        to = dict(transformer_options or {})
        base = executor.class_obj
        run = to.get(RUNS_KEY, {}).get(self.id)
        if run is None:  # a model call outside any sampling: a run for this call only
            log.debug("P3S: %s called outside a sampling; using a one-call run", self.id)
            run = self.new_run(base.model_sampling)
            to[RUNS_KEY] = {**to.get(RUNS_KEY, {}), self.id: run}
        _, weight = run.schedule.weight_at(float(t.flatten()[0]))
        cou = list(to.get("cond_or_uncond", [0]))
        rows = injection.reference_rows(cou, x.shape[0], self.reference_latent.shape[0],
                                        self.uncond_sees_reference) if weight > 0 else None
        if rows is None or bool((rows < 0).all()):
            return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)
        self._reference_pass(run, base, x, t, c_concat, c_crossattn, to, kwargs, cou)
        run.weight, run.rows = weight, rows
        to[PASS_KEY] = {**to.get(PASS_KEY, {}), self.id: "read"}
        owns_segments = begin_read(to)
        try:
            return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)
        finally:
            if owns_segments:
                to[SEGMENTS_KEY].clear()
            if self.mode == "per_step":
                run.bank.clear()

    def _reference_pass(self, run: P3SRun, base, x, t, c_concat, c_crossattn, to, kwargs, cou) -> None:
        """Fill the bank: the subject-only reference through the U-Net at this sigma (once, when cached)."""
        sigma = float(t.flatten()[0])
        if len(run.bank) and (self.mode == "cached" or run.bank_sigma == sigma):
            return
        ms = base.model_sampling
        refs = self.reference_latent.shape[0]
        per_chunk = x.shape[0] // max(len(cou), 1)
        chunk = cou.index(0) if 0 in cou else 0  # the reference pass reads the positive prompt
        src = (torch.arange(refs) + chunk * per_chunk if refs > 1 else torch.tensor([chunk * per_chunk])).to(x.device)
        latent = self.levels.latents[self._level(run, x)].to(x.device, x.dtype)
        ref_sigma = torch.full((refs,), float(ms.sigma_min) if self.mode == "cached" else sigma, device=x.device)
        x_ref = ms.noise_scaling(ref_sigma, run.reference_noise(latent), latent)
        ctx = c_crossattn.index_select(0, src) if c_crossattn is not None else None
        adapter = self._adapter_for(x)
        if adapter is not None and ctx is not None:
            ctx = adapter.reference_context(ctx, self.subject_tokens.to(ctx.device), self.subject_valid.to(ctx.device))
        concat = c_concat.index_select(0, src) if c_concat is not None else None
        extra = {k: (v.index_select(0, src) if torch.is_tensor(v) and v.shape[:1] == x.shape[:1] else v)
                 for k, v in kwargs.items()}
        ref_to = {k: v for k, v in to.items() if k != SEGMENTS_KEY}
        ref_to[PASS_KEY] = {self.id: "write"}
        ref_to["cond_or_uncond"] = [0]
        run.bank.clear()
        # The original apply function: the reference pass skips other packs' model wrappers and
        # ControlNets, which belong to the image being generated, not to the reference.
        base._apply_model(x_ref, ref_sigma, concat, ctx, None, ref_to, **extra)
        run.bank_sigma = sigma

    def _level(self, run: P3SRun, x: torch.Tensor) -> int:
        """The reference level for this sampling's latent size (p3s_core/reference_scale.py), chosen once."""
        if run.level is None or run.level_for != tuple(x.shape[-2:]):
            run.level, run.level_for = self.levels.pick(x.shape[-2], x.shape[-1]), tuple(x.shape[-2:])
            log.debug("P3S: %s: reference level %d (%s) for a %s latent", self.id, run.level,
                      tuple(self.levels.latents[run.level].shape[-2:]), tuple(x.shape[-2:]))
        return run.level

    # ---- the attn1 patch -------------------------------------------------------------------------
    def __call__(self, n, context, value, extra_options):
        which = extra_options.get(PASS_KEY, {}).get(self.id)
        if which is None:
            return n, context, value
        run = extra_options[RUNS_KEY][self.id]
        key = injection.layer_key(extra_options["block"], extra_options.get("block_index", 0))
        if which == "write":
            return self._write(run, key, n, context, value, extra_options)
        return self._read(run, key, n, context, value, extra_options.get(SEGMENTS_KEY))

    def subject_delta(self, n, extra_options):
        """The attn2 subject read of a read pass (None elsewhere): the adapter's subject cross-attention with
        the rows and weight the attn1 read uses (nodes/subject_read.py)."""
        if extra_options.get(PASS_KEY, {}).get(self.id) != "read":
            return None
        run = extra_options[RUNS_KEY][self.id]
        adapter = self._adapter_for(n)
        key = injection.layer_key(extra_options["block"], extra_options.get("block_index", 0))
        if adapter is None or run.rows is None or not adapter.has_subject_attn(key):
            return None
        if run.subject_ctx is None:  # once per sampling (per step in the trainer, whose runs last one call)
            run.subject_ctx = adapter.subject_context(self.subject_tokens, self.subject_valid)
        return adapter.subject_read(key, n, run.subject_ctx, run.rows, run.weight)

    def _write(self, run: P3SRun, key: str, n, context, value, extra_options):
        """Reference pass: bank this block's subject tokens (after the adapter's delta, if any)."""
        adapter = self._adapter_for(n)
        if adapter is not None and adapter.has_layer(key):
            context_is_n, value_is_context = context is n, value is context
            n = adapter.apply_delta(key, n)
            context = n if context_is_n else adapter.apply_delta(key, context)
            value = context if value_is_context else adapter.apply_delta(key, value)
        own = _own_tokens(n, context, extra_options)
        shape = extra_options["original_shape"]
        grid = injection.layer_grid(own.shape[1], shape[-2], shape[-1])
        tokens, valid = injection.gather_tokens(own, run.keep_for(self.levels.masks[run.level or 0], grid,
                                                                   own.device))
        run.bank.write(key, tokens, valid)
        return n, context, value

    def _read(self, run: P3SRun, key: str, n, context, value, segments):
        """Read pass: append the banked subject tokens to keys/values and record where they sit."""
        entry = run.bank.read(key)
        if entry is None or segments is None or run.rows is None or run.rows.shape[0] != n.shape[0]:
            return n, context, value
        tokens, valid = entry
        adapter = self._adapter_for(n)
        query = functools.partial(adapter.read_query, key) if adapter is not None and adapter.has_read(key) else None
        gain = adapter.read_log_gain(key) if adapter is not None else None
        appended = injection.Appended(context.shape[1], run.rows, valid, run.weight, query, gain)
        segments.add(AppendedSegment(key, n.shape[1], appended))
        rows = run.rows.to(n.device)
        return n, injection.append_tokens(context, tokens, rows), injection.append_tokens(value, tokens, rows)


def _own_tokens(n: torch.Tensor, context: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """The block's image tokens [B, h*w, C]: ``n``, or the keys' source when a patch before P3S merged the
    queries (ToMe merges ``n`` only; the keys keep every token, first, in their original order)."""
    activations = extra_options.get("activations_shape")  # [B, C, h, w] of this block (SpatialTransformer)
    tokens = activations[-2] * activations[-1] if activations and len(activations) == 4 else n.shape[1]
    if n.shape[1] != tokens and context is not None and context.shape[1] >= tokens:
        return context[:, :tokens]
    return n


def find_patches(model) -> list[P3SPatch]:
    """The P3S patches installed on a MODEL, oldest first (empty when it is not P3S-patched)."""
    get = getattr(model, "get_attachment", None)
    return list(get(ATTACHMENT) or ()) if get is not None else []
