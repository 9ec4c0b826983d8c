"""bench/overhead.py runs the product end to end (tiny models, one round): a smoke run, no timings asserted."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.server
def test_overhead_bench_runs_the_real_nodes_and_reexecutes_only_the_sampler(tmp_path, host, capsys):
    spec = importlib.util.spec_from_file_location("p3s_bench_overhead", REPO / "bench" / "overhead.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    summary = bench.main(["--family", "tiny", "--sizes", "64", "--steps", "2", "--rounds", "1",
                          "--models", str(tmp_path / "models"), "--json", str(tmp_path / "out.json")])
    rows = summary[64]
    assert set(rows) == {"plain", "per_step", "cached"}
    assert rows["plain"]["ratio"] == 1.0 and all(r["seconds"] > 0 and r["ratio"] > 0 for r in rows.values())
    assert all(r["unet_MiB"] > 0 for r in rows.values())
    import json
    records = json.loads((tmp_path / "out.json").read_text())["records"]
    assert len(records) == 3
    # the checkpoint, the text encodes and both P3S Apply nodes came from ComfyUI's cache: only the
    # sampler and what follows it ran, so only sampling is compared
    assert all(r["ran"] == ["dec", "ks", "out"] for r in records), [r["ran"] for r in records]
    assert all(r["latent"] == [1, 4, 8, 8] for r in records)
    out = capsys.readouterr().out
    assert "size=64 steps=2 per_step=" in out and "cached=" in out
