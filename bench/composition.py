"""P3S next to Self-Attention Guidance, Perturbed-Attention Guidance and ToMe, and merge vs skip for an attn1 replace.

Tiny random SD1.5-family checkpoint (p3s_host), ComfyUI's own nodes and sampler in-process, CPU, 3 euler
steps at cfg 5 on an 8x8 latent. Every figure is the mean |difference| of two final latents:

- per other node: the node alone vs plain sampling, P3S alone vs plain, P3S + node vs the node alone (both
  orders), the two orders against each other, and P3S at weight 0 + node vs the node alone (0 = exact);
- ``replace``: a plain-attention attn1 replace on the middle block, handled the way P3S does it (merge) and
  the alternative (skip injection in that block), each against P3S alone.

    ~/.cache/p3s/host/venv/bin/python bench/composition.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # p3s_host; appended so ComfyUI's own top-level modules keep priority
from p3s_host import scenes  # noqa: E402
from p3s_host.comfy_env import InProcessHost  # noqa: E402

OTHERS = {"SelfAttentionGuidance": {"scale": 0.5, "blur_sigma": 2.0}, "PerturbedAttentionGuidance": {"scale": 3.0},
          "TomePatchModel": {"ratio": 0.5}}


class Bench:
    def __init__(self) -> None:
        import torch
        base = Path(tempfile.mkdtemp(prefix="p3s_bench_compose_"))
        self.host = InProcessHost(base)
        self.host.tiny.make_checkpoint(str(base / "models" / "checkpoints" / "tiny_sd15.safetensors"))
        self.N = self.host.nodes
        with torch.inference_mode():
            self.model, clip, self.vae = self.N.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
            self.pos = self.N.CLIPTextEncode().encode(clip, "a dog on a beach")[0]
            self.neg = self.N.CLIPTextEncode().encode(clip, "")[0]
        self.image, self.masks, _ = scenes.two_subjects(64, 64, seed=2)

    def p3s(self, model, weight: float = 1.0):
        import torch
        with torch.inference_mode():
            return self.N.NODE_CLASS_MAPPINGS["P3SApply"].execute(
                model, self.vae, self.image[None], weight, 0.0, 1.0, mask=self.masks[:1].float()).result[0]

    def other(self, name: str, model):
        return self.N.NODE_CLASS_MAPPINGS[name].execute(model, **OTHERS[name]).result[0]

    def sample(self, model):
        import torch
        with torch.inference_mode():
            return self.N.common_ksampler(model, 7, 3, 5.0, "euler", "normal", self.pos, self.neg,
                                          {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]


def _d(a, b) -> float:
    return float((a - b).abs().mean())


def _replace_figures(b: Bench, plain, p3s) -> str:
    from comfy.ldm.modules.attention import optimized_attention
    attention = b.host.pack("nodes.attention")

    def merged(q, k, v, extra):  # P3S wraps it: sees the own keys, the subject is merged afterwards
        return optimized_attention(q, k, v, extra["n_heads"])

    def skipped(q, k, v, extra):  # the alternative: drop the subject keys in this block
        segments = extra.get(attention.SEGMENTS_KEY)
        key = attention._layer_key(extra)
        mine = segments.take(key, q, k) if segments is not None and key else []
        own = min(s.offset for s in mine) if mine else k.shape[1]
        return optimized_attention(q, k[:, :own], v[:, :own], extra["n_heads"])
    skipped.p3s = True  # not wrapped by P3S
    out = {}
    for name, fn in (("merge", merged), ("skip", skipped)):
        m = b.p3s(b.model).clone()
        m.set_model_attn1_replace(fn, "middle", 0, 0)
        out[name] = _d(b.sample(m), p3s)
    return (f"replace middle.0.0: merge vs P3S alone {out['merge']:.2e}, skip vs P3S alone {out['skip']:.3f} "
            f"(P3S alone vs plain {_d(p3s, plain):.3f})")


def main() -> None:
    import torch
    torch.set_num_threads(1)
    b = Bench()
    plain, p3s = b.sample(b.model), b.sample(b.p3s(b.model))
    for name in OTHERS:
        alone = b.sample(b.other(name, b.model))
        before = b.sample(b.p3s(b.other(name, b.model)))
        after = b.sample(b.other(name, b.p3s(b.model)))
        zero = b.sample(b.p3s(b.other(name, b.model), 0.0))
        print(f"{name}: alone vs plain {_d(alone, plain):.3f}, P3S alone vs plain {_d(p3s, plain):.3f}, "
              f"P3S+node vs node alone {_d(before, alone):.3f} (before) {_d(after, alone):.3f} (after), "
              f"orders differ by {_d(before, after):.2e}, weight 0 vs node alone {_d(zero, alone):.1e}")
    print(_replace_figures(b, plain, p3s))


if __name__ == "__main__":
    main()
