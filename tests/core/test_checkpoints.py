"""Training checkpoints: what --resume refuses, and how it says so (pure core, no comfy)."""
import os

import pytest
import torch

from p3s_core.adapter import AdapterSpec, P3SAdapter
from p3s_core.training import load_checkpoint, save_checkpoint


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _adapter() -> P3SAdapter:
    return P3SAdapter(AdapterSpec(family="sd15", rank=2, alpha=2.0, clip_width=8, ctx_dim=16,
                                  layers=[("input.1.0", 8)]))


def test_a_pickle_with_code_is_refused_without_pytorchs_advice(tmp_path):
    path = tmp_path / "evil.step000010.pt"
    torch.save({"format": "p3s-train-checkpoint", "payload": _RunsCode()}, path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, _adapter(), None, None)
    msg = str(info.value)
    assert msg.startswith("P3S: --resume: evil.step000010.pt holds Python objects")
    assert "system" in msg and "never runs code from a file" in msg
    assert "weights_only" not in msg and "trust" not in msg


def test_truncated_and_foreign_files_are_refused(tmp_path):
    adapter = _adapter()
    opt = torch.optim.AdamW(adapter.parameters())
    good = save_checkpoint(tmp_path / "run.step000001.pt", adapter, opt, 1, [{"step": 1, "loss": 0.5}],
                           torch.Generator().manual_seed(0))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"^P3S: --resume: cut.pt could not be read .*truncated") as info:
        load_checkpoint(cut, _adapter(), None, None)
    assert "weights_only" not in str(info.value)
    torch.save({"just": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"^P3S: --resume: other.pt is not a P3S training checkpoint"):
        load_checkpoint(tmp_path / "other.pt", _adapter(), None, None)
    assert load_checkpoint(good, _adapter(), None, None)[:2] == (1, [{"step": 1, "loss": 0.5}])
