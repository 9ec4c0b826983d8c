"""HTTP routes of the pack: ``POST /p3s/select``, the Point Picker's live selection preview.

Request JSON::

    {"image": {"filename": "x.png", "subfolder": "", "type": "input" | "temp" | "output"},
     "points": <points JSON string or object>,
     "options": {"split_touching": true | false, ...}}   # optional: the Point Picker's other widget values
                                                          # (unknown names are ignored); a top-level
                                                          # "split_touching" is accepted too. Default true.

Answer (200)::

    {"width": W, "height": H, "mask": "data:image/png;base64,...", "mask_width": w, "mask_height": h,
     "area": fraction of the image selected, "points": {"positive": n, "negative": n}}

The mask PNG is grayscale (255 = selected) at a reduced size (long side <= PREVIEW_SIDE). Errors are
4xx JSON ``{"error": "P3S: ..."}`` that name the file by its name only (never a server path). Only files
inside ComfyUI's input, temp and output folders are read.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
from urllib.parse import unquote

log = logging.getLogger("P3S")

MAX_SIDE = 4096  # pixels, either side
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_BODY_BYTES = 256 * 1024  # a request is a file name and a few points
PREVIEW_SIDE = 512  # the selection runs on (and the mask is returned at) this long side at most
FOLDER_TYPES = ("input", "temp", "output")


class RouteError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message if message.startswith("P3S:") else "P3S: " + message


def _check_name(value, what: str, allow_slash: bool) -> str:
    if not isinstance(value, str):
        raise RouteError(400, f"select: image.{what} must be a string, got {type(value).__name__}.")
    if len(value) > 1024 or "\x00" in value:
        raise RouteError(400, f"select: image.{what} is not a valid file name.")
    # Check the raw and the URL-decoded (twice) forms: none may climb out or be absolute.
    forms = {value, unquote(value), unquote(unquote(value))}
    for form in forms:
        norm = form.replace("\\", "/")
        parts = [p for p in norm.split("/")]
        if (norm.startswith("/") or os.path.isabs(form) or (len(norm) > 1 and norm[1] == ":")
                or ".." in parts or (not allow_slash and "/" in norm)):
            raise RouteError(400, f"select: image.{what} {value!r} is not allowed: use a plain file name "
                                  "inside ComfyUI's input, temp or output folder (no '..', no absolute path).")
    return value


def resolve_image_path(spec) -> str:
    """The real path of the requested image, guaranteed inside the input/temp/output folder."""
    import folder_paths

    if not isinstance(spec, dict):
        raise RouteError(400, 'select: "image" must be an object {"filename", "subfolder", "type"}.')
    kind = spec.get("type", "input") or "input"
    if kind not in FOLDER_TYPES:
        raise RouteError(400, f"select: image.type {kind!r} is not one of {', '.join(FOLDER_TYPES)}.")
    filename = _check_name(spec.get("filename"), "filename", allow_slash=False)
    if not filename.strip():
        raise RouteError(400, "select: image.filename is empty.")
    subfolder = _check_name(spec.get("subfolder", "") or "", "subfolder", allow_slash=True)
    base = folder_paths.get_directory_by_type(kind)
    if not base:
        raise RouteError(404, f"select: no {kind} folder configured.")
    base_real = os.path.realpath(base)
    path = os.path.join(base_real, subfolder.strip("/"), filename) if subfolder else os.path.join(base_real, filename)
    real = os.path.realpath(path)
    try:
        inside = os.path.commonpath([base_real, real]) == base_real and real != base_real
    except ValueError:
        inside = False
    if not inside:
        raise RouteError(403, f"select: {filename!r} resolves outside the {kind} folder; refused.")
    if not os.path.isfile(real):
        shown = f"{subfolder.strip('/')}/{filename}" if subfolder else filename
        raise RouteError(404, f"select: image {shown!r} not found in the {kind} folder.")
    return real


def _points_text(points) -> str:
    if points is None:
        raise RouteError(400, 'select: "points" is missing.')
    if not isinstance(points, str):
        try:
            points = json.dumps(points)
        except (TypeError, ValueError, RecursionError):
            raise RouteError(400, "select: points are not JSON-serialisable.")
    return points  # bounded and parsed by PointSet.for_image, like the nodes' points


def _split_option(body: dict) -> bool:
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise RouteError(400, 'select: "options" must be an object of the Point Picker\'s widget values.')
    value = body.get("split_touching", (options or {}).get("split_touching"))
    if value is None:
        return True
    if not isinstance(value, bool):
        raise RouteError(400, f'select: "split_touching" must be true or false, got {json.dumps(value)[:40]}.')
    return value


def _read_image(path: str):
    """The RGB image at ``path`` (size- and decode-checked), EXIF-rotated; errors name only the file."""
    from PIL import Image, ImageOps

    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise RouteError(413, f"select: image file is {size / 2**20:.1f} MB; the live preview reads at most "
                              f"{MAX_FILE_BYTES // 2**20} MB.")
    try:
        im = Image.open(path)
        W, H = im.size  # header only: nothing decoded yet
    except Exception:  # noqa: BLE001 - any decoder failure is the user's file
        raise RouteError(400, f"select: {name!r} is not an image the preview can read (PNG, JPEG, WebP, ...).")
    if W > MAX_SIDE or H > MAX_SIDE:
        raise RouteError(413, f"select: image is {W}x{H}; the live preview handles at most "
                              f"{MAX_SIDE}x{MAX_SIDE}. The node itself still runs on it when queued.")
    try:
        return ImageOps.exif_transpose(im).convert("RGB")
    except Exception:  # noqa: BLE001 - truncated or corrupt data shows up only when decoding
        raise RouteError(400, f"select: {name!r} is truncated or corrupt and cannot be decoded; save it again.")


def _compute(path: str, points_text: str, split_touching: bool = True) -> dict:
    """Blocking part: decode the image (size-checked), select, encode the mask."""
    import numpy as np
    import torch
    from PIL import Image

    from ..p3s_core.points import PointSet
    from ..p3s_core.rngr import select_subject

    im = _read_image(path)
    W, H = im.size
    pts = PointSet.for_image(points_text, W, H)
    scale = min(1.0, PREVIEW_SIDE / max(W, H))
    w, h = max(1, round(W * scale)), max(1, round(H * scale))
    if (w, h) != (W, H):
        im = im.resize((w, h), Image.BILINEAR)
    img = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    sel = select_subject(img, pts.rescaled(w, h), split_touching=split_touching)
    mask = (sel.mask > 0.5).numpy()
    buf = io.BytesIO()
    Image.fromarray((mask * 255).astype(np.uint8), "L").save(buf, "PNG", optimize=True)
    return {
        "width": W,
        "height": H,
        "mask_width": w,
        "mask_height": h,
        "mask": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
        "area": float(mask.mean()),
        "points": {"positive": len(pts.positive), "negative": len(pts.negative)},
    }


async def _read_body(request) -> dict:
    """The JSON object of the request, read at most MAX_BODY_BYTES far (413 beyond that, 400 if not JSON)."""
    too_big = RouteError(413, f"select: the request body is larger than {MAX_BODY_BYTES // 1024} KB; a preview "
                              "request is an image name and a few points.")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_big
    raw = b""
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise too_big
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RouteError(400, "select: the request body is not JSON.")
    if not isinstance(body, dict):
        raise RouteError(400, 'select: the request body must be a JSON object {"image", "points"}.')
    return body


async def select_handler(request):
    from aiohttp import web

    def fail(status, message):
        return web.json_response({"error": message}, status=status)

    try:
        body = await _read_body(request)
        path = resolve_image_path(body.get("image"))
        text = _points_text(body.get("points"))
        split = _split_option(body)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, _compute, path, text, split)
        return web.json_response(result)
    except RouteError as e:
        return fail(e.status, e.message)
    except ValueError as e:
        msg = str(e)
        return fail(400, msg if msg.startswith("P3S:") else f"P3S: select: {msg}")
    except Exception as e:  # noqa: BLE001 - never a bare 500 page for the widget
        log.exception("P3S: /p3s/select failed")
        return fail(500, f"P3S: select: internal error ({type(e).__name__}); see the server log.")


def register_routes() -> bool:
    """Add the pack's routes to the running PromptServer; a no-op (False) without one (in-process use)."""
    try:
        from server import PromptServer
    except Exception:  # noqa: BLE001 - not inside a ComfyUI server
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None or getattr(instance, "_p3s_routes", False):
        return False
    instance.routes.post("/p3s/select")(select_handler)
    instance._p3s_routes = True
    return True
