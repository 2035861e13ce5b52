"""Routes only the web UI's LoRA list and training page need (the job routes are in `app.py`).

    GET /api/loras/info?name=style     `lora info` of one LoRA in models_dir, as fields and as text
    GET /api/jobs/{id}/training        a train job's validation images and checkpoints so far
    POST /api/infotext {"text"}         A1111 parameters text -> the generate fields it sets

Both only read files the server already names: LoRAs through `ServerPaths.lora`, a job's own output
folder through `safe_join`.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import Request
from loraflow.serve.paths import IMAGE_SUFFIXES, NotFound, ServerPaths
from loraflow.serve.validation import Invalid
from loraflow.generate.infotext import infotext_to_config
from loraflow.models.lora.info import format_info, info_fields
from loraflow.models.lora.load import read_lora
from loraflow.train.checkpoint import list_checkpoints

# `info_fields` the LoRA list shows as fields; the rest stays in the text
INFO_FIELDS = ("format", "type", "family", "rank", "alpha", "base_model", "modules")


def add_ui_routes(app, state) -> None:
    @app.get("/api/loras/info")
    async def lora_info(name: str):
        return await asyncio.to_thread(lora_details, state.paths, name)

    @app.post("/api/infotext")
    async def infotext(request: Request):
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise Invalid('infotext: expected {"text": the A1111 parameters text}', "text")
        return infotext_to_config(body["text"])

    @app.get("/api/jobs/{job_id}/training")
    async def training(job_id: str):
        job = state.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.kind != "train":
            raise Invalid(f"job {job_id} is a {job.kind} job, not a train job", "job")
        return await asyncio.to_thread(training_files, state.paths, job_id)


def lora_details(paths: ServerPaths, name: str) -> dict:
    """`loraflow lora info` of a LoRA by name: its fields (type, rank, alpha, base model, ...) and the
    full text the CLI prints."""
    lora = read_lora(paths.lora(name))
    fields = info_fields(lora)
    return {"name": name, **{key: fields[key] for key in INFO_FIELDS}, "text": format_info(lora)}


def training_files(paths: ServerPaths, job_id: str) -> dict:
    """Validation images (oldest first) and complete checkpoints of a train job's output folder."""
    out = paths.outputs / "jobs" / job_id
    base = f"/api/jobs/{job_id}/files/"
    samples = sorted(p for p in (out / "samples").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
        if (out / "samples").is_dir() else []
    checkpoints = [{"name": p.name, "step": int(p.name.split("-")[1]), "modified": p.stat().st_mtime}
                   for p in list_checkpoints(out)]
    loras = sorted(p.name for p in out.glob("*.safetensors")) if out.is_dir() else []
    return {"samples": [{"name": p.name, "url": base + _rel(p, out)} for p in samples],
            "checkpoints": checkpoints, "loras": loras}


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
