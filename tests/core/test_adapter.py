"""P3S adapter module and its safetensors format: identity at init, round trip, every refusal."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from p3s_core import adapter as ad
from p3s_core.adapter import (AdapterSpec, P3SAdapter, adapter_state_dict, check_compatible,
                              load_adapter, load_adapter_state_dict, read_adapter_header,
                              save_adapter)

LAYERS = [("input.1.0", 32), ("middle.0.0", 64), ("output.11.0", 32)]


def _spec(**kw) -> AdapterSpec:
    base = dict(family="sd15", rank=4, alpha=4.0, clip_width=48, ctx_dim=40, layers=LAYERS)
    base.update(kw)
    return AdapterSpec(**base)


def _nudged(spec: AdapterSpec | None = None) -> P3SAdapter:
    torch.manual_seed(0)
    a = P3SAdapter(spec or _spec())
    with torch.no_grad():
        for name, p in a.named_parameters():
            if name.endswith("up.weight"):
                p.normal_(std=0.1)
        a.gate.fill_(0.7)
    return a


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "subject.safetensors"
    save_adapter(_nudged(), path, extra_metadata={"trained_steps": 12})
    return path


def test_core_does_not_import_comfy():
    code = ("import sys, p3s_core.adapter, p3s_core.losses; "
            "sys.exit(any(m == 'comfy' or m.startswith('comfy.') for m in sys.modules))")
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_fresh_adapter_is_identity():
    torch.manual_seed(1)
    a = P3SAdapter(_spec())
    n = torch.randn(2, 10, 32)
    assert torch.equal(a.apply_delta("input.1.0", n), n)
    assert a.apply_delta("not.a.layer", n) is n
    text = torch.randn(2, 77, 40)
    tokens, valid = torch.randn(2, 9, 48), torch.rand(2, 9) > 0.3
    out = a.reference_context(text, tokens, valid)
    assert (out - text).abs().max().item() == 0.0
    # fp16 text stays bit-exact too, and long (2 x 77) prompts work
    text16 = torch.randn(1, 154, 40).half()
    assert torch.equal(a.reference_context(text16, tokens[:1], valid[:1]), text16)


def test_nudged_adapter_changes_outputs_and_trains():
    a = _nudged()
    n = torch.randn(2, 10, 64)
    assert not torch.allclose(a.apply_delta("middle.0.0", n), n)
    text = torch.randn(2, 77, 40)
    tokens = torch.randn(1, 9, 48)  # subject batch 1 is tiled to the text batch
    out = a.reference_context(text, tokens)
    assert out.shape == text.shape and not torch.allclose(out, text)
    with torch.no_grad():
        a.gate.fill_(1.0)
    full = a.reference_context(text, tokens)
    # gate 1: text fully replaced; the proj does not depend on the text
    torch.testing.assert_close(full, a.reference_context(torch.randn_like(text), tokens))
    # gradients reach gate, resampler and the lora weights
    fresh = P3SAdapter(_spec())
    loss = fresh.reference_context(text, tokens).sum() + fresh.apply_delta("input.1.0", n[..., :32]).sum()
    loss.backward()
    assert fresh.gate.grad is not None and fresh.gate.grad.abs() > 0
    assert fresh.lora["input"]["1"]["0"].up.weight.grad.abs().sum() > 0


def test_masked_tokens_are_ignored_and_empty_rows_fall_back_to_text():
    a = _nudged()
    text = torch.randn(2, 77, 40)
    tokens = torch.randn(2, 6, 48)
    valid = torch.tensor([[True, True, False, False, False, False], [False] * 6])
    out = a.reference_context(text, tokens, valid)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], text[1])  # all tokens invalid -> proj is the text
    other = tokens.clone()
    other[0, 2:] = 100.0  # padded tokens must not matter
    torch.testing.assert_close(a.reference_context(text, other, valid)[0], out[0])


def test_state_dict_names_are_file_names():
    names = set(adapter_state_dict(P3SAdapter(_spec())))
    assert {"lora.input.1.0.down.weight", "lora.output.11.0.up.weight", "gate"} <= names
    assert all(n.startswith(("lora.", "proj.")) or n == "gate" for n in names)


def test_save_load_round_trip(saved: Path):
    src = _nudged()
    spec = read_adapter_header(saved)
    assert spec == src.spec
    meta = ad.AdapterSpec.to_metadata(spec)
    assert set(meta) == {"format", "format_version", "family", "rank", "alpha", "clip_width",
                         "ctx_dim", "num_queries", "layers"}
    b = load_adapter(saved, family="sd15", layers=LAYERS, ctx_dim=40, clip_width=48)
    assert b.source == "subject.safetensors"
    for (k1, v1), (k2, v2) in zip(src.state_dict().items(), b.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    text, tokens = torch.randn(1, 77, 40), torch.randn(1, 5, 48)
    torch.testing.assert_close(b.reference_context(text, tokens), src.reference_context(text, tokens))
    half = load_adapter(saved, dtype=torch.float16)
    assert half.gate.dtype == torch.float16


def test_state_dict_helpers_for_checkpoints():
    src = _nudged()
    dst = P3SAdapter(_spec())
    load_adapter_state_dict(dst, adapter_state_dict(src))
    assert torch.equal(dst.gate, src.gate)
    bad = adapter_state_dict(src)
    bad["lora.input.1.0.down.weight"] = torch.zeros(5, 32)
    before = adapter_state_dict(dst)
    with pytest.raises(ValueError, match="P3S: .*disagree"):
        load_adapter_state_dict(dst, bad)
    assert all(torch.equal(v, adapter_state_dict(dst)[k]) for k, v in before.items())


def _refused(path: Path, match: str, **kw) -> str:
    with pytest.raises(ValueError, match=match) as info:
        load_adapter(path, **kw)
    msg = str(info.value)
    assert msg.startswith("P3S: ")
    return msg


@pytest.mark.parametrize("ext", [".ckpt", ".pt", ".bin", ""])
def test_refuses_pickle_files(tmp_path: Path, ext: str):
    path = tmp_path / f"adapter{ext}"
    torch.save({"gate": torch.zeros(())}, path)
    msg = _refused(path, "safetensors only; pickle files are refused for safety")
    assert path.name in msg and (ext or "(none)") in msg


def test_refuses_safetensors_without_p3s_metadata(tmp_path: Path):
    path = tmp_path / "some_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, str(path))
    msg = _refused(path, "not a P3S adapter")
    assert "some_lora.safetensors" in msg and "format='p3s-adapter'" in msg
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "pt"})
    assert "format='pt'" in _refused(path, "not a P3S adapter")


def test_refuses_unsupported_format_version(tmp_path: Path, saved: Path):
    tensors = load_file(str(saved))
    meta = _nudged().spec.to_metadata()
    meta["format_version"] = "2"
    path = tmp_path / "future.safetensors"
    save_file(tensors, str(path), metadata=meta)
    msg = _refused(path, "format_version '2'")
    assert "update the P3S node pack" in msg


def test_refuses_truncated_file(tmp_path: Path, saved: Path):
    data = saved.read_bytes()
    for cut in (len(data) // 2, 6, len(data) - 3):
        path = tmp_path / "cut.safetensors"
        path.write_bytes(data[:cut])
        msg = _refused(path, "truncated or corrupt")
        assert "cut.safetensors" in msg and "re-download or re-train" in msg


def test_refuses_wrong_family(saved: Path):
    msg = _refused(saved, "is for SD1.5 but the MODEL is SDXL: use an SDXL adapter", family="sdxl")
    assert "subject.safetensors" in msg


def test_refuses_wrong_clip_width(saved: Path):
    _refused(saved, r"token width 1024 \(ViT-L\) but adapter .* expects 48", clip_width=1024)
    a = load_adapter(saved)
    with pytest.raises(ValueError, match=r"token width 1024 \(ViT-L\)"):
        a.reference_context(torch.randn(1, 77, 40), torch.randn(1, 4, 1024))
    spec = _spec(clip_width=1280)
    with pytest.raises(ValueError, match=r"1024 \(ViT-L\) but adapter 'x' expects 1280 \(ViT-H\)"):
        check_compatible(spec, "x", clip_width=1024)


def test_refuses_wrong_layers_and_ctx_dim(saved: Path):
    other = [("input.1.0", 32), ("input.2.0", 32), ("middle.0.0", 64), ("output.11.0", 32)]
    msg = _refused(saved, "different architecture", layers=other)
    assert "input.2.0" in msg and "3 transformer layers" in msg
    dims = [("input.1.0", 32), ("middle.0.0", 128), ("output.11.0", 32)]
    assert "middle.0.0: 64 vs 128" in _refused(saved, "different architecture", layers=dims)
    _refused(saved, "cross-attention width 40 but the MODEL uses 768", ctx_dim=768)


def test_refuses_tampered_tensor_shape(tmp_path: Path, saved: Path):
    tensors = load_file(str(saved))
    tensors["lora.middle.0.0.down.weight"] = torch.zeros(8, 64)
    meta = _nudged().spec.to_metadata()
    path = tmp_path / "tampered.safetensors"
    save_file(tensors, str(path), metadata=meta)
    msg = _refused(path, "disagree with its P3S metadata")
    assert "lora.middle.0.0.down.weight" in msg and "tampered.safetensors" in msg
    del tensors["lora.middle.0.0.down.weight"]
    save_file(tensors, str(path), metadata=meta)
    _refused(path, "missing .*lora.middle.0.0.down.weight")


def test_refuses_corrupt_metadata_and_nan(tmp_path: Path, saved: Path):
    tensors = load_file(str(saved))
    meta = _nudged().spec.to_metadata()
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={**meta, "layers": "[[oops"})
    _refused(path, "unreadable P3S metadata")
    save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if k != "rank"})
    _refused(path, "incomplete P3S metadata")
    save_file(tensors, str(path), metadata={**meta, "family": "sd3"})
    _refused(path, "family 'sd3' is not supported")
    tensors["gate"] = torch.tensor(float("nan"))
    save_file(tensors, str(path), metadata=meta)
    _refused(path, "NaN")


def test_save_rules(tmp_path: Path):
    a = _nudged()
    with pytest.raises(ValueError, match="safetensors only"):
        save_adapter(a, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="reserved"):
        save_adapter(a, tmp_path / "a.safetensors", extra_metadata={"family": "sdxl"})
    save_adapter(a, tmp_path / "a.safetensors", dtype=torch.float16)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert load_file(str(tmp_path / "a.safetensors"))["gate"].dtype == torch.float16
    with pytest.raises(FileNotFoundError, match="P3S: .*missing.safetensors"):
        load_adapter(tmp_path / "missing.safetensors")


def test_spec_validation():
    with pytest.raises(ValueError, match="prefix"):
        _spec(layers=[("input.1", 8), ("input.1.0", 8)])
    with pytest.raises(ValueError, match="duplicate"):
        _spec(layers=[("input.1.0", 8), ("input.1.0", 8)])
    spec = _spec()
    assert AdapterSpec.from_metadata(spec.to_metadata()) == spec
    assert json.loads(spec.to_metadata()["layers"]) == [list(x) for x in LAYERS]
    assert os.fspath(ad.FORMAT_NAME) == "p3s-adapter"


def _crafted(tmp_path: Path, saved: Path, name: str, **changes) -> Path:
    """``saved``'s tensors with header values replaced (what a hostile re-save of a real adapter looks like)."""
    meta = {**_nudged().spec.to_metadata(), **{k: str(v) for k, v in changes.items()}}
    path = tmp_path / f"{name}.safetensors"
    save_file(load_file(str(saved)), str(path), metadata=meta)
    return path


@pytest.mark.parametrize("changes,match", [
    ({"num_queries": 50_000_000}, r"num_queries=50000000 is above the limit of 1024"),
    ({"rank": 1_000_000}, r"rank=1000000 is above the limit of 1024"),
    ({"ctx_dim": 10 ** 6}, r"ctx_dim=1000000 is above the limit"),
    ({"clip_width": 10 ** 6}, r"clip_width=1000000 is above the limit"),
    ({"layers": json.dumps([["input.1.0", 10 ** 9]])}, r"bad layer \('input.1.0', 1000000000\)"),
    ({"layers": json.dumps([[f"i.{i}", 8] for i in range(600)])}, r"600 layers is above the limit of 512"),
    ({"layers": "[[\"input.1.0\", 1e999]]"}, r"unreadable P3S metadata"),
    ({"layers": "[" * 20_000 + "]" * 20_000}, r"unreadable P3S metadata \(nested too deeply\)"),
    ({"layers": "[" * 100_000}, r"longer than 65536 characters"),
    ({"rank": "9" * 5000}, r"unreadable P3S metadata \(rank is 5000 characters long"),
    ({"rank": 1024, "num_queries": 1024, "ctx_dim": 4096, "clip_width": 4096,
      "layers": json.dumps([[f"input.{i}.0", 8192] for i in range(512)])}, r"parameters, above the limit"),
    ({"num_queries": 1000}, r"disagree with its P3S metadata .*proj.queries: \(77, 40\) vs expected \(1000, 40\)"),
])
def test_crafted_header_values_are_refused_before_anything_is_built(tmp_path: Path, saved: Path, monkeypatch,
                                                                     changes, match):
    path = _crafted(tmp_path, saved, "crafted", **changes)
    built = []
    real_init = ad.P3SAdapter.__init__

    def spy(self, spec):  # modules built off the meta device are allocations
        built.append(torch.empty(0).device.type)
        real_init(self, spec)
    monkeypatch.setattr(ad.P3SAdapter, "__init__", spy)
    msg = _refused(path, match)
    assert "crafted.safetensors" in msg
    assert all(device == "meta" for device in built), built


def test_header_size_and_tensor_dtypes_are_checked(tmp_path: Path, saved: Path):
    data = saved.read_bytes()
    huge = tmp_path / "huge_header.safetensors"
    huge.write_bytes((50 * 2 ** 20).to_bytes(8, "little") + data[8:])
    assert "a header of 52,428,800 bytes" in _refused(huge, "truncated or corrupt")
    tensors = load_file(str(saved))
    tensors["gate"] = torch.tensor(1, dtype=torch.int64)
    odd = tmp_path / "int_gate.safetensors"
    save_file(tensors, str(odd), metadata=_nudged().spec.to_metadata())
    _refused(odd, r"tensor 'gate' has dtype I64, expected one of F32, F16, BF16")
