"""Convert a ComfyUI UI-format workflow (what "Save" writes, what drags into the canvas) to an API prompt.

    python scripts/ui_to_api.py workflow.json --server http://127.0.0.1:8188 > prompt.json
    python scripts/ui_to_api.py workflow.json --object-info object_info.json > prompt.json

The node definitions come from the server's ``GET /object_info``; widget values are mapped the way
the frontend stores them: in ``input_order`` (required, then optional), one value per widget input,
plus the extra ``control_after_generate`` value after a seed ("fixed", "randomize", ...) and the
extra upload value after an ``image_upload`` combo. A widget input that is linked (a converted
widget) still has its value stored, but the link wins. Handled node kinds:

- mode 2 (muted / "never"): dropped, and so are the links out of it;
- mode 4 (bypassed): dropped; each consumer is rewired to the bypassed node's first input of the same type;
- ``Reroute``: followed to its source; ``PrimitiveNode``: its value is written into the widgets it feeds;
- ``Note`` / ``MarkdownNote`` (and any node type without a definition that has no links): skipped.

Subgraphs and group nodes are not supported (a clear error says so). Pure Python, no ComfyUI import.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request

CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "Label (rgthree)", "Fast Groups Muter (rgthree)"}
MUTED, BYPASSED = 2, 4


class ConversionError(ValueError):
    pass


def _spec(defn: dict, name: str):
    for sect in ("required", "optional"):
        if name in defn.get("input", {}).get(sect, {}):
            return defn["input"][sect][name]
    return None


def input_type(spec) -> str:
    """'INT', 'COMBO', 'MODEL', ... of an /object_info input spec."""
    t = spec[0] if isinstance(spec, (list, tuple)) else spec
    return "COMBO" if isinstance(t, list) else str(t)


def _opts(spec) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    """True when the frontend shows this input as a widget (it then has a widgets_values entry)."""
    opts = _opts(spec)
    if opts.get("forceInput") or opts.get("rawLink"):
        return False
    return input_type(spec) in WIDGET_TYPES


def input_order(defn: dict) -> list[str]:
    order = defn.get("input_order")
    if order:
        return list(order.get("required", [])) + list(order.get("optional", []))
    return list(defn.get("input", {}).get("required", {})) + list(defn.get("input", {}).get("optional", {}))


def widget_values(node: dict, defn: dict) -> dict:
    """{input name: value} from the node's widgets_values."""
    vals = node.get("widgets_values")
    if vals is None:
        return {}
    if isinstance(vals, dict):  # some frontends/extensions store a name -> value mapping
        return {k: v for k, v in vals.items() if _spec(defn, k) is not None}
    vals = list(vals)
    out, i = {}, 0
    for name in input_order(defn):
        spec = _spec(defn, name)
        if not is_widget(spec):
            continue
        if i >= len(vals):
            break
        out[name] = vals[i]
        i += 1
        opts = _opts(spec)
        control = opts.get("control_after_generate") or (
            input_type(spec) == "INT" and name in ("seed", "noise_seed"))
        if control and i < len(vals) and isinstance(vals[i], str) and vals[i] in CONTROL_VALUES:
            i += 1
        if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
            if i < len(vals) and vals[i] in ("image", "video", "audio", "upload", None):
                i += 1
    return out


def _links(workflow: dict) -> dict:
    """link id -> (source node id, source slot, target node id, target slot, type), from either link format."""
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            lid, src, slot, dst, dslot, typ = (link["id"], link["origin_id"], link["origin_slot"],
                                               link["target_id"], link["target_slot"], link.get("type"))
        else:
            lid, src, slot, dst, dslot, typ = link[:6]
        links[lid] = (str(src), int(slot), str(dst), int(dslot), typ)
    return links


def _resolve(lid, nodes: dict, links: dict, seen=()):
    """(source node id, output slot) of a link after Reroutes and bypassed nodes; None if muted/absent."""
    if lid is None or lid not in links:
        return None
    src, slot, _, _, typ = links[lid]
    n = nodes.get(src)
    if n is None or lid in seen:
        return None
    if n["type"] == "Reroute":
        ins = n.get("inputs") or [{}]
        return _resolve(ins[0].get("link"), nodes, links, seen + (lid,))
    mode = n.get("mode", 0)
    if mode == MUTED:
        return None
    if mode == BYPASSED:
        out_type = (n.get("outputs") or [{}] * (slot + 1))[slot].get("type", typ)
        for inp in n.get("inputs") or []:
            if inp.get("link") is not None and inp.get("type") == out_type:
                return _resolve(inp["link"], nodes, links, seen + (lid,))
        return None
    return src, slot


def _node_inputs(n: dict, defn: dict, nodes: dict, links: dict) -> dict:
    """The API inputs of one node: its widget values, then its links (PrimitiveNode values inlined)."""
    inputs = dict(widget_values(n, defn))
    for inp in n.get("inputs") or []:
        name = inp.get("widget", {}).get("name") or inp.get("name")
        if inp.get("link") is None:
            continue
        src = links.get(inp["link"])
        if src is not None and nodes.get(src[0], {}).get("type") == "PrimitiveNode":
            vals = nodes[src[0]].get("widgets_values") or []
            if vals:
                inputs[name] = vals[0]
            continue
        target = _resolve(inp["link"], nodes, links)
        if target is None:
            inputs.pop(name, None)
            continue
        inputs[name] = [target[0], target[1]]
    return inputs


def convert(workflow: dict, object_info: dict, keep_unknown: bool = False) -> dict:
    """UI workflow dict -> API prompt dict {id: {class_type, inputs, _meta}}."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise ConversionError("subgraphs are not supported by this converter: unpack them in the UI first")
    nodes = {str(n["id"]): n for n in workflow.get("nodes", [])}
    links = _links(workflow)
    prompt = {}
    for nid, n in nodes.items():
        ctype = n["type"]
        if ctype in VIRTUAL or n.get("mode", 0) in (MUTED, BYPASSED):
            continue
        defn = object_info.get(ctype)
        if defn is None:
            if "-" in ctype and len(ctype) == 36:
                raise ConversionError(f"node {nid} is a subgraph/group node ({ctype}): unpack it in the UI first")
            if keep_unknown:
                prompt[nid] = {"class_type": ctype, "inputs": {}, "_meta": {"title": n.get("title", ctype)}}
                continue
            raise ConversionError(f"node {nid}: type {ctype!r} is not installed on this server "
                                  "(missing custom node pack?)")
        meta = {"title": n.get("title") or defn.get("display_name") or ctype}
        prompt[nid] = {"class_type": ctype, "inputs": _node_inputs(n, defn, nodes, links), "_meta": meta}
    # Drop links to nodes that were not emitted (muted, virtual), e.g. a link out of a muted loader.
    for entry in prompt.values():
        for k, v in list(entry["inputs"].items()):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in prompt:
                del entry["inputs"][k]
    return prompt


def link_types(workflow: dict, object_info: dict) -> list[tuple]:
    """(link id, source output type, target input type, declared link type) for every link between defined nodes."""
    nodes = {str(n["id"]): n for n in workflow.get("nodes", [])}
    out = []
    for link in workflow.get("links", []):
        lid, src, slot, dst, dslot, typ = link[:6]
        s, d = nodes[str(src)], nodes[str(dst)]
        sdef, ddef = object_info.get(s["type"]), object_info.get(d["type"])
        if sdef is None or ddef is None:
            continue
        stype = sdef["output"][slot]
        stype = "COMBO" if isinstance(stype, list) else stype
        inp = d["inputs"][dslot]
        name = inp.get("widget", {}).get("name") or inp["name"]
        spec = _spec(ddef, name)
        out.append((lid, stype, None if spec is None else input_type(spec), typ))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="UI workflow JSON -> API prompt JSON")
    ap.add_argument("workflow")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--server", help="base URL of a running ComfyUI, e.g. http://127.0.0.1:8188")
    g.add_argument("--object-info", help="a saved GET /object_info response")
    a = ap.parse_args(argv)
    wf = json.load(open(a.workflow))
    if a.server:
        with urllib.request.urlopen(a.server.rstrip("/") + "/object_info", timeout=60) as r:
            oi = json.load(r)
    else:
        oi = json.load(open(a.object_info))
    json.dump(convert(wf, oi), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
