"""ComfyUI-compatible HTTP and websocket routes (shapes from ComfyUI's `server.py`), served both at
the root and under `/api`, as ComfyUI does:

    POST /prompt            {"prompt", "client_id"?, "extra_data"?} -> {"prompt_id", "number", "node_errors"}
    GET  /prompt            {"exec_info": {"queue_remaining"}}
    GET  /history[/{id}]    {id: {"prompt": [number, id, prompt, extra_data, outputs], "outputs", "status", "meta"}}
    POST /history           {"clear": true} | {"delete": [ids]}
    GET  /queue             {"queue_running": [...], "queue_pending": [...]};  POST /queue {"clear"} | {"delete"}
    POST /interrupt         stop the running prompt at its next step
    GET  /view?filename=&subfolder=&type=output|input|temp[&preview=webp;90]
    POST /upload/image      multipart `image` (+ subfolder, overwrite) -> {"name", "subfolder", "type"}
    GET  /object_info[/{class}], /system_stats, /embeddings, /models[/{folder}], /extensions
    WS   /ws?clientId=      status, execution_start, execution_cached, executing, progress, executed,
                            execution_success / execution_error / execution_interrupted; previews as
                            binary frames (uint32 event 1 + uint32 format 1 = JPEG + bytes)
"""
from __future__ import annotations

import asyncio
import io
import re
import struct
import sys
import uuid

from fastapi import Request, WebSocket
from loraflow.serve import store as st
from loraflow.serve.limits import parse_json
from loraflow.serve.paths import NotFound, PathRefused, safe_join
from loraflow.serve.validation import Invalid
from loraflow.atomic import atomic_path
from loraflow.errors import InputError

COMFY_EVENTS = ("execution_start", "execution_cached", "executing", "progress", "executed", "execution_success",
                "execution_error", "execution_interrupted")
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ ()\-]")


def add_comfy_routes(app, state) -> None:
    from fastapi import APIRouter

    for prefix in ("", "/api"):
        router = APIRouter(prefix=prefix, include_in_schema=prefix == "")
        _routes(router, state)
        app.include_router(router)


def _routes(router, state) -> None:
    from fastapi.responses import FileResponse, JSONResponse, Response

    from loraflow.serve.comfy.graph import validate_prompt
    from loraflow.serve.comfy.nodes import object_info

    @router.post("/prompt")
    async def post_prompt(request: Request):
        try:
            data = parse_json(await request.body(), "body", state.limits.max_json_depth)
        except Invalid as e:
            return JSONResponse({"error": {"type": "invalid_prompt", "message": str(e), "details": "",
                                           "extra_info": {}}, "node_errors": {}}, status_code=400)
        if not isinstance(data, dict) or "prompt" not in data:
            return JSONResponse({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "",
                                           "extra_info": {}}, "node_errors": {}}, status_code=400)
        ok, error, outputs, node_errors = await asyncio.to_thread(validate_prompt, data["prompt"], state.paths,
                                                                  state.limits)
        if not ok:
            return JSONResponse({"error": error, "node_errors": node_errors}, status_code=400)
        from loraflow.serve.comfy.graph import normalize

        extra = data.get("extra_data") if isinstance(data.get("extra_data"), dict) else {}
        client_id = data.get("client_id") if isinstance(data.get("client_id"), str) else None
        if client_id:
            extra["client_id"] = client_id
        prompt_id = data.get("prompt_id")
        if not (isinstance(prompt_id, str) and re.fullmatch(r"[A-Za-z0-9\-]{8,64}", prompt_id)) or state.store.get(prompt_id):
            prompt_id = str(uuid.uuid4())
        payload = {"prompt": normalize(data["prompt"]), "extra_data": extra, "outputs": outputs}
        job = await asyncio.to_thread(state.submit, "workflow", payload, client_id, prompt_id)
        return {"prompt_id": job.id, "number": job.number, "node_errors": node_errors}

    @router.get("/prompt")
    async def get_prompt():
        return {"exec_info": {"queue_remaining": state.queue_remaining()}}

    @router.get("/history")
    async def history(max_items: int | None = None):
        jobs = state.store.list((st.DONE, st.FAILED, st.CANCELLED, st.INTERRUPTED), "workflow", max_items or 10000,
                                newest_first=True)
        return {job.id: _history_entry(job) for job in reversed(jobs)}

    @router.get("/history/{prompt_id}")
    async def history_one(prompt_id: str):
        job = state.store.get(prompt_id)
        if job is None or job.kind != "workflow" or job.status not in st.FINISHED:
            return {}
        return {job.id: _history_entry(job)}

    @router.post("/history")
    async def post_history(request: Request):
        clear, delete = await _clear_or_delete(request, state)
        if clear:
            for job in state.store.list(st.FINISHED, "workflow", 100000):
                state.store.delete(job.id)
        for job_id in delete:
            state.store.delete(job_id)
        return Response(status_code=200)

    @router.get("/queue")
    async def get_queue():
        running = state.worker.current
        pending = state.store.list((st.QUEUED,), "workflow", 10000, newest_first=False)
        return {"queue_running": [_queue_item(running)] if running and running.kind == "workflow" else [],
                "queue_pending": [_queue_item(j) for j in pending]}

    @router.post("/queue")
    async def post_queue(request: Request):
        clear, delete = await _clear_or_delete(request, state)
        if clear:
            for job in state.store.list((st.QUEUED,), "workflow", 100000):
                state.worker.cancel(job.id)
        for job_id in delete:
            job = state.store.get(job_id)
            if job and job.status == st.QUEUED:
                state.worker.cancel(job.id)
        return Response(status_code=200)

    @router.post("/interrupt")
    async def interrupt():
        state.worker.interrupt()
        return Response(status_code=200)

    @router.get("/view")
    async def view(filename: str, subfolder: str = "", type: str = "output", preview: str | None = None,
                   channel: str | None = None):
        match = re.fullmatch(r"(.*) \[(output|input|temp)\]", filename)
        if match:
            filename, type = match.group(1), match.group(2)
        path = state.paths.output_file(filename, subfolder, type)
        if preview or channel in ("rgb", "a"):
            return Response(_converted(path, preview, channel), media_type=_converted_type(preview, channel))
        return FileResponse(path, headers={"Content-Disposition": f'filename="{path.name}"'})

    @router.post("/upload/image")
    async def upload_image(request: Request):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("image")
        if upload is None or not hasattr(upload, "read"):
            return JSONResponse({"error": "multipart field 'image' (a file) is required"}, status_code=400)
        data = await upload.read()
        kind = str(form.get("type") or "input")
        if kind != "input":
            raise PathRefused("uploads go to type 'input' only")
        subfolder = str(form.get("subfolder") or "")
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
        name = await asyncio.to_thread(_save_upload, state, data, upload.filename or "upload.png", subfolder, overwrite)
        return {"name": name, "subfolder": subfolder, "type": "input"}

    @router.get("/object_info")
    async def get_object_info():
        return await asyncio.to_thread(object_info, state.paths)

    @router.get("/object_info/{node_class}")
    async def get_object_info_node(node_class: str):
        return await asyncio.to_thread(object_info, state.paths, node_class)

    @router.get("/system_stats")
    async def system_stats():
        import torch

        from loraflow import __version__

        device = state.models.device if state.models.device not in ("auto", "") else (
            "cuda" if torch.cuda.is_available() else "cpu")
        return {"system": {"os": sys.platform, "python_version": sys.version, "pytorch_version": torch.__version__,
                           "comfyui_version": f"loraflow {__version__}", "embedded_python": False, "argv": []},
                "devices": [{"name": device, "type": device.split(":")[0], "index": 0}]}

    @router.get("/embeddings")
    async def embeddings():
        return []

    @router.get("/extensions")
    async def extensions():
        return []

    @router.get("/models")
    async def model_folders():
        return ["checkpoints", "loras", "controlnet"]

    @router.get("/models/{folder}")
    async def model_folder(folder: str):
        what = {"checkpoints": "model", "loras": "LoRA", "controlnet": "ControlNet"}.get(folder)
        if what is None:
            raise NotFound(f"no model folder '{folder}' (checkpoints, loras, controlnet)")
        return state.paths.list(what)

    @router.websocket("/ws")
    async def ws(websocket: WebSocket):
        await _websocket(websocket, state)


async def _clear_or_delete(request, state) -> tuple[bool, list[str]]:
    """ComfyUI's `{"clear": true}` / `{"delete": [prompt ids]}` body; anything else is a 4xx naming the key."""
    data = parse_json(await request.body() or b"{}", "body", state.limits.max_json_depth)
    if not isinstance(data, dict):
        raise Invalid(f"body: expected a JSON object {{\"clear\": bool, \"delete\": [ids]}}, got {type(data).__name__}")
    unknown = set(data) - {"clear", "delete"}
    if unknown:
        raise Invalid(f"body: unknown key '{sorted(unknown)[0]}'; known keys: clear, delete", sorted(unknown)[0])
    clear, delete = data.get("clear", False), data.get("delete") or []
    if not isinstance(clear, bool):
        raise Invalid(f"key 'clear' = {clear!r}: expected true or false", "clear")
    if not isinstance(delete, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in delete):
        raise Invalid(f"key 'delete' = {str(delete)[:60]}: expected a list of prompt ids", "delete")
    return clear, [str(i) for i in delete]


async def _websocket(websocket, state) -> None:
    from fastapi import WebSocketDisconnect

    await websocket.accept()
    sid = websocket.query_params.get("clientId") or uuid.uuid4().hex
    listener = state.bus.listen(lambda e: e["type"] == "status" or e.get("client_id") in (None, sid))

    async def reader():
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    reading = asyncio.create_task(reader())
    try:
        await websocket.send_json({"type": "status", "data": {"status": _queue_info(state), "sid": sid}})
        while True:
            getter = asyncio.create_task(listener.queue.get())
            done, _ = await asyncio.wait({getter, reading}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            event = getter.result()
            if event["type"] == "preview":
                await websocket.send_bytes(struct.pack(">II", 1, 1) + event["jpeg"])  # PREVIEW_IMAGE, JPEG
            elif event["type"] == "status":
                await websocket.send_json({"type": "status", "data": {"status": _queue_info(state)}})
            elif event["type"] in COMFY_EVENTS:
                data = dict(event["data"])
                data.setdefault("prompt_id", event["job"])
                await websocket.send_json({"type": event["type"], "data": data})
    except (WebSocketDisconnect, RuntimeError, ConnectionError):
        pass
    finally:
        state.bus.close(listener)
        reading.cancel()


def _queue_info(state) -> dict:
    return {"exec_info": {"queue_remaining": state.queue_remaining()}}


def _queue_item(job: st.Job) -> list:
    p = job.payload
    return [job.number, job.id, p.get("prompt"), p.get("extra_data", {}), p.get("outputs", [])]


def _history_entry(job: st.Job) -> dict:
    result = job.result or {}
    status = result.get("status") or {
        "status_str": "success" if job.status == st.DONE else "error", "completed": job.status == st.DONE,
        "messages": [["execution_interrupted", {"prompt_id": job.id, "message": job.error}]]
        if job.status in (st.CANCELLED, st.INTERRUPTED) else [],
    }
    return {"prompt": _queue_item(job), "outputs": result.get("outputs", {}), "status": status,
            "meta": result.get("meta", {})}


def _converted(path, preview: str | None, channel: str | None) -> bytes:
    from PIL import Image

    fmt, quality = "png", 90
    if preview:
        info = preview.split(";")
        fmt = info[0] if info[0] in ("webp", "jpeg") else "webp"
        quality = int(info[-1]) if info[-1].isdigit() else 90
    with Image.open(path) as im:
        if channel == "a":
            alpha = im.getchannel("A") if "A" in im.getbands() else Image.new("L", im.size, 255)
            im = Image.new("RGBA", im.size)
            im.putalpha(alpha)
        elif channel == "rgb" or fmt == "jpeg":
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format=fmt.upper(), quality=quality)
    return buf.getvalue()


def _converted_type(preview: str | None, channel: str | None) -> str:
    if preview:
        fmt = preview.split(";")[0]
        return f"image/{fmt if fmt in ('webp', 'jpeg') else 'webp'}"
    return "image/png"


def _save_upload(state, data: bytes, filename: str, subfolder: str, overwrite: bool) -> str:
    """Check the bytes are one image of an allowed format and size (Pillow), then store them."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, size = im.format, im.size
            im.verify()
        if size[0] * size[1] > state.options.max_image_pixels:
            raise InputError(f"image is {size[0]}x{size[1]}, more than {state.options.max_image_pixels} pixels")
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # verify() does not decode; a truncated file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"upload is not a valid image: {e}") from None
    if fmt not in UPLOAD_FORMATS:
        raise InputError(f"image format {fmt} not accepted; use {', '.join(UPLOAD_FORMATS)}")
    base = _SAFE_NAME.sub("_", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip(" .") or "upload"
    stem = base.rsplit(".", 1)[0] if "." in base else base
    name = stem + UPLOAD_FORMATS[fmt]
    folder = safe_join(state.paths.inputs, subfolder, "input") if subfolder else state.paths.inputs
    folder.mkdir(parents=True, exist_ok=True)
    i = 1
    while not overwrite and (folder / name).exists():
        if safe_join(folder, name, "input").read_bytes() == data:  # never compared through a link leading out
            return name
        name = f"{stem} ({i}){UPLOAD_FORMATS[fmt]}"
        i += 1
    with atomic_path(folder / name) as tmp:
        tmp.write_bytes(data)
    return name
