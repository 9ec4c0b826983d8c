"""The docs keep up with the code: every error message is in the README's troubleshooting section, the
README's two commands exist, and the files it names exist. Pure Python (no ComfyUI)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SOURCES = ("p3s_core", "nodes")
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical"}
MIN_PREFIX = 20  # shorter constant prefixes ("P3S: adapter ") say nothing; use the message's longest literal piece
MIN_PIECE = 14


def _pieces(node) -> list[str] | None:
    """The constant pieces of a str / f-string / 'a' + x expression, in order; None if not a string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        out, cur = [], ""
        for v in node.values:
            if isinstance(v, ast.Constant):
                cur += v.value
            else:
                out.append(cur)
                cur = ""
        out.append(cur)
        return out
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _pieces(node.left), _pieces(node.right)
        if left is None:
            return None
        return left + ([""] + right if right is not None else [""])
    return None


def _logging_strings(tree) -> set[int]:
    """ids of string nodes that are arguments of log.info(...) and the like (not user-facing errors)."""
    ids = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in LOG_METHODS:
            for a in n.args:
                ids.update(id(x) for x in ast.walk(a))
    return ids


def error_signatures() -> list[tuple[str, str]]:
    """(where, text) for every 'P3S: ...' message in p3s_core/ and nodes/: the constant prefix before the
    first placeholder, or, when that is shorter than MIN_PREFIX, the message's longest constant piece."""
    found = {}
    for pkg in SOURCES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text())
            skip = _logging_strings(tree)
            for n in ast.walk(tree):
                if id(n) in skip or not isinstance(n, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                    continue
                pieces = _pieces(n)
                if not pieces or not pieces[0].startswith("P3S:"):
                    continue
                text = pieces[0].split("\n")[0].strip()
                if len(text) < MIN_PREFIX:
                    text = max((p.strip() for p in pieces[1:]), key=len, default="")
                    if len(text) < MIN_PIECE:
                        continue  # e.g. "P3S: " + message: a wrapper, not a message of its own
                found.setdefault(text, f"{path.relative_to(REPO)}:{n.lineno}")
    return sorted((where, text) for text, where in found.items())


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.replace("`", "").replace("\\", "")).strip()


def troubleshooting() -> str:
    text = README.read_text()
    m = re.search(r"^## Troubleshooting\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, "README.md has no '## Troubleshooting' section"
    return _norm(m.group(1))


def test_every_error_message_is_in_troubleshooting():
    sigs = error_signatures()
    assert len(sigs) > 30, "the extractor found too few messages: is it still reading the sources?"
    section = troubleshooting()
    missing = [f"{where}: {text!r}" for where, text in sigs if _norm(text) not in section]
    assert not missing, "error messages missing from README.md ## Troubleshooting:\n" + "\n".join(missing)


def test_readme_commands_exist():
    text = README.read_text()
    cmds = re.findall(r"^\s*(bash [^\s]+)\s*(?:#.*)?$", text, re.M)
    assert cmds[:2] == ["bash scripts/run_example.sh", "bash .ci/run"], cmds[:4]
    for cmd in cmds:
        assert (REPO / cmd.split()[1]).is_file(), cmd
    assert "pytest" in (REPO / ".ci" / "run").read_text()


def test_files_named_in_readme_and_nodes_exist():
    names = set()
    for doc in (README, REPO / "NODES.md"):
        for m in re.finditer(r"`((?:scripts|tests|example_workflows|assets|docs|bench|nodes|p3s_core|web|\.ci)/"
                             r"[A-Za-z0-9_./-]+)`", doc.read_text()):
            names.add(m.group(1).rstrip("/."))
    assert len(names) > 8
    missing = sorted(n for n in names if "*" not in n and not (REPO / n).exists())
    assert not missing, f"files named in the docs that do not exist: {missing}"


def test_nodes_md_lists_every_node_and_input():
    text = (REPO / "NODES.md").read_text()
    for path in sorted((REPO / "nodes").glob("*.py")):
        tree = ast.parse(path.read_text())
        for n in ast.walk(tree):
            if isinstance(n, ast.keyword) and n.arg == "node_id" and isinstance(n.value, ast.Constant):
                assert f"`{n.value.value}`" in text, f"NODES.md does not document {n.value.value}"
                for c in ast.walk(tree):
                    if (isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "Input"
                            and c.args and isinstance(c.args[0], ast.Constant)):
                        assert f"`{c.args[0].value}`" in text, f"NODES.md: {n.value.value} input {c.args[0].value}"


def test_examples_and_models_documented():
    text = README.read_text()
    for p in sorted((REPO / "example_workflows").glob("*.json")):
        assert p.name in text, f"README does not mention {p.name}"
    for name in ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors",
                 "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "models/clip_vision", "models/p3s"):
        assert name in text, name
