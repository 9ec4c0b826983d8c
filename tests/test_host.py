"""The pack loads into a real ComfyUI host, and the test harness itself works."""
from __future__ import annotations

import os

import pytest


def _txt2img(ckpt: str = "tiny_sd15.safetensors", steps: int = 3) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a dog", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 1, "steps": steps, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "harness"}},
    }


def test_pack_loads_in_process(host):
    registry = host.pack("nodes.registry")
    ids = sorted(n.define_schema().node_id for n in registry.NODES)
    assert host.pack_nodes == ids


def test_model_folder_registered_in_process(host):
    fp = host.folder_paths
    paths = fp.get_folder_paths("p3s")
    assert os.path.join(fp.models_dir, "p3s") in paths
    assert str(host.base / "extra" / "p3s_extra") in paths  # the extra_model_paths.yaml entry is kept
    (host.base / "extra" / "p3s_extra" / "from_yaml.safetensors").write_bytes(b"x")
    (host.base / "extra" / "p3s_extra" / "not_an_adapter.ckpt").write_bytes(b"x")
    names = fp.get_filename_list("p3s")
    assert "from_yaml.safetensors" in names and "not_an_adapter.ckpt" not in names


@pytest.mark.server
def test_server_imports_pack_without_failure(server):
    log = server.log()
    assert not [l for l in log.splitlines() if "IMPORT FAILED" in l and "ComfyUI-P3S" in l], log[-3000:]
    assert "Cannot import" not in log or "ComfyUI-P3S" not in log.split("Cannot import", 1)[1][:400]


@pytest.mark.server
def test_object_info_lists_every_node(server, host):
    info = server.get("/object_info")
    registry = host.pack("nodes.registry")
    for node in registry.NODES:
        schema = node.define_schema()
        entry = info.get(schema.node_id)
        assert entry is not None, f"{schema.node_id} missing from /object_info"
        declared_inputs = {i.id for i in schema.inputs}
        got = set(entry["input"].get("required", {})) | set(entry["input"].get("optional", {}))
        assert declared_inputs == got, (schema.node_id, declared_inputs, got)
        assert entry["output"] == [o.get_io_type() for o in schema.outputs]
        assert entry["category"].startswith("P3S")


@pytest.mark.server
def test_server_lists_adapters_from_extra_paths(server):
    (server.base / "extra" / "p3s_extra" / "yaml_adapter.safetensors").write_bytes(b"x")
    (server.base / "models" / "p3s" / "default_adapter.safetensors").write_bytes(b"x")
    info = server.get("/object_info")
    spec = info["P3SLoadAdapter"]["input"]["required"]["adapter_name"]
    names = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 combo: ["COMBO", {"options": [...]}]
    assert "yaml_adapter.safetensors" in names and "default_adapter.safetensors" in names


@pytest.mark.server
def test_plain_txt2img_through_server(server):
    entry = server.run(_txt2img())
    images = entry["outputs"]["7"]["images"]
    assert len(images) == 1
    png = server.view(images[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
