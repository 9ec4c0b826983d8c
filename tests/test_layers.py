"""The layering and size rules of docs/design.md ("Layers"), checked on the source (pure Python, no ComfyUI).

- ``p3s_core/`` is plain torch/numpy: it never imports ComfyUI, the ComfyUI layer or the dev tooling;
- the pack's runtime (``__init__.py``, ``nodes/``, ``p3s_core/``) never imports ``p3s_host`` or the tests;
- ``scripts/``, ``bench/``, ``p3s_host/`` and ``worldbench/`` never import the tests (tests import them);
- no module-level mutable state in the injection code; no mutable default arguments anywhere;
- no file in ``p3s_core/`` or ``nodes/`` over 400 lines; no function over 60 lines unless its docstring
  says why (``Why this is long:``);
- every docstring or comment that cites a design document names a file that exists.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = ("nodes", "p3s_core")
TOOLS = ("scripts", "bench", "p3s_host", "worldbench")
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server",
                 "execution", "latent_preview", "node_helpers", "utils"}
OLD_TEST_HELPERS = {"tests", "conftest", "host", "scenes", "tiny_models", "support"}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_REASON = "Why this is long:"


def _files(*roots: str) -> list[Path]:
    out = []
    for root in roots:
        base = REPO / root
        out += [base] if base.is_file() else sorted(base.rglob("*.py"))
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, module, relative level) of every import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, node.module or "", node.level))
    return out


def test_core_never_imports_comfyui_the_comfy_layer_or_the_tooling():
    bad = []
    for path in _files("p3s_core"):
        depth = len(path.relative_to(REPO / "p3s_core").parts)  # p3s_core/x.py: 1, p3s_core/training/x.py: 2
        for line, module, level in _imports(path):
            top = module.split(".")[0]
            if level == 0 and top in COMFY_MODULES | {"p3s_host", "tests"}:
                bad.append(f"{_rel(path)}:{line} imports {module}")
            if level > depth:  # a relative import that leaves p3s_core (e.g. from ..nodes)
                bad.append(f"{_rel(path)}:{line} imports {'.' * level}{module} outside p3s_core")
    assert not bad, "\n".join(bad)


def test_runtime_and_tools_never_import_the_tests():
    bad = []
    for path in _files("__init__.py", *RUNTIME, *TOOLS):
        for line, module, level in _imports(path):
            top = module.split(".")[0]
            if level == 0 and (top in OLD_TEST_HELPERS or (top == "p3s_host" and _rel(path).split("/")[0]
                                                            in RUNTIME + ("__init__.py",))):
                bad.append(f"{_rel(path)}:{line} imports {module}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value in ("tests", "support") or "tests/support" in node.value):
                bad.append(f"{_rel(path)}:{node.lineno} names the tests folder ({node.value!r})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", ["nodes/patch.py", "nodes/attention.py"])
def test_no_module_level_mutable_state_in_the_injection_code(name):
    tree = ast.parse((REPO / name).read_text())
    mutable = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    bad = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            value = node.value
            if isinstance(value, mutable) or (isinstance(value, ast.Call) and getattr(value.func, "id", "")
                                              in ("list", "dict", "set", "defaultdict", "deque")):
                bad.append(f"{name}:{node.lineno}")
        if isinstance(node, ast.Global):
            bad.append(f"{name}:{node.lineno} global")
    assert not bad, f"module-level mutable state: {bad}"


def test_no_mutable_default_arguments():
    bad = []
    for path in _files("__init__.py", *RUNTIME, *TOOLS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
                if any(isinstance(d, (ast.List, ast.Dict, ast.Set)) for d in defaults):
                    bad.append(f"{_rel(path)}:{node.lineno} {getattr(node, 'name', 'lambda')}")
    assert not bad, "mutable default arguments: " + ", ".join(bad)


def test_file_and_function_sizes():
    bad = []
    for path in _files("__init__.py", *RUNTIME, *TOOLS):
        rel = _rel(path)
        text = path.read_text()
        if rel.split("/")[0] in RUNTIME and len(text.splitlines()) > MAX_FILE_LINES:
            bad.append(f"{rel}: {len(text.splitlines())} lines (max {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or ""):
                    bad.append(f"{rel}:{node.lineno} {node.name}() is {length} lines and says not why")
    assert not bad, "\n".join(bad)


def test_cited_design_documents_exist():
    cite = re.compile(r"((?:[\w.-]+/)*[\w.-]*design[\w.-]*\.md)", re.I)
    bad = []
    for path in _files("__init__.py", *RUNTIME, *TOOLS):
        rel = _rel(path)
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for name in cite.findall(line):
                if not (REPO / name).is_file():
                    bad.append(f"{rel}:{n} cites {name}, which is not in the repository")
    assert not bad, "\n".join(bad)
    assert (REPO / "docs" / "design.md").is_file()
