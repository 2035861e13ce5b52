"""The FastAPI application: state (store, worker, model cache, event bus), error mapping, and the
loraflow job routes. ComfyUI-compatible routes are in `comfy/routes.py`; the UI is `static/`.

    app = create_app(ServeOptions(models_dir="models", outputs_dir="outputs"))

Routes (all JSON unless noted):
    GET  /                          the web UI
    GET  /api/health                {"ok", "queue", "running", "loaded_models"}
    GET  /api/catalog               models, LoRAs, ControlNets, schedulers a client may name
    GET  /api/options/{kind}        JSON schema of a job kind's config (the UI builds its form from it)
    POST /api/jobs/{kind}           submit (kind: generate | storyboard | train | data-filter) -> 202 job
    GET  /api/jobs                  history/queue (?status=queued,running&kind=generate&limit=50)
    GET  /api/jobs/{id}             one job
    GET  /api/jobs/{id}/events      Server-Sent Events: status, progress {value,max}, preview (base64 JPEG)
    POST /api/jobs/{id}/cancel      cancel (queued: at once; running: at the next step)
    POST /api/jobs/{id}/requeue     run a failed / cancelled / interrupted job again
    DELETE /api/jobs/{id}           forget a finished job (its files stay)
    GET  /api/jobs/{id}/files/{name}  a file the job wrote (image, grid, story.json)
    GET  /api/loras/info, /api/jobs/{id}/training   for the web UI (`ui_routes.py`)
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Request
from loraflow.errors import ConfigError, InputError, LoraflowError, ModelLoadError
from loraflow.models.loading import BUILTIN_MODELS
from loraflow.serve import store as st
from loraflow.serve.confine import confine_payload
from loraflow.serve.limits import check_job_limits, parse_json
from loraflow.serve.options import ServeOptions
from loraflow.serve.paths import NotFound, PathRefused, ServerPaths, safe_join
from loraflow.serve.security import BodyTooLarge, GuardMiddleware, allowed_hosts
from loraflow.serve.validation import Invalid
from loraflow.generate.schedulers import SAMPLERS
from loraflow.serve.comfy.routes import add_comfy_routes
from loraflow.serve.events import EventBus
from loraflow.serve.jobs import JOB_KINDS
from loraflow.serve.limits import Limits
from loraflow.serve.model_cache import ModelCache
from loraflow.serve.ui_routes import add_ui_routes
from loraflow.serve.watchdog import Watchdog
from loraflow.serve.worker import Worker

log = logging.getLogger("loraflow.serve")
STATIC_DIR = Path(__file__).parent / "static"
SUBMITTABLE = ("generate", "storyboard", "train", "data-filter")


class ServerState:
    """Everything the routes share; built in `create_app`, started/stopped by the app's lifespan."""

    def __init__(self, options: ServeOptions):

        self.options = options
        self.limits = Limits.from_options(options)
        outputs = Path(options.outputs_dir).resolve()
        self.paths = ServerPaths(Path(options.models_dir).resolve(), outputs,
                                 Path(options.data_dir).resolve() if options.data_dir else outputs / "data")
        self.paths.make()
        self.store = st.JobStore(options.db or outputs / "jobs.sqlite", options.queue_size)
        self.bus = EventBus()
        self.models = ModelCache(options.model_cache_size, options.device)
        self.worker = Worker(self.store, self.paths, self.models, self.bus)
        self.watchdog = Watchdog(self.worker, options.job_time_limit, options.cancel_grace)

    def submit(self, kind: str, payload: dict, client_id: str | None = None, job_id: str | None = None) -> st.Job:
        job = self.store.add(kind, payload, client_id, job_id)
        self.worker.notify()
        self.bus.publish({"type": "status", "job": job.id, "client_id": client_id, "data": {"status": st.QUEUED}})
        return job

    def queue_remaining(self) -> int:
        return self.store.count(st.QUEUED) + (1 if self.worker.current else 0)


def create_app(options: ServeOptions | None = None):
    from fastapi import FastAPI
    from fastapi.responses import FileResponse

    options = options or ServeOptions()
    state = ServerState(options)

    @asynccontextmanager
    async def lifespan(app):
        state.worker.start()
        state.watchdog.start()
        yield
        await asyncio.to_thread(state.watchdog.stop)
        await asyncio.to_thread(state.worker.stop)
        state.store.close()

    app = FastAPI(title="loraflow", lifespan=lifespan, docs_url="/api/docs", openapi_url="/api/openapi.json",
                  redoc_url=None)
    app.state.loraflow = state
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=options.cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(GuardMiddleware, max_body=int(options.max_body_mb * 1024 * 1024), token=options.auth_token,
                       allowed_origins=options.cors_origins,
                       allowed_hosts=allowed_hosts(options.host, options.allowed_host))
    _error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        path = safe_join(STATIC_DIR, name, "static")
        if not path.is_file():
            raise NotFound(f"no static file {name}")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    _job_routes(app, state)

    add_ui_routes(app, state)
    add_comfy_routes(app, state)
    return app


def _error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    def answer(status: int, message: str, **extra):
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.exception_handler(Invalid)
    async def invalid(request, e: Invalid):
        return JSONResponse(e.to_json(), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request, e: RequestValidationError):
        errors = e.errors()
        loc = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        return answer(422, f"key '{loc}': {errors[0]['msg']}" if errors else "invalid request", field=loc,
                      detail=json.loads(json.dumps(errors, default=str)))

    @app.exception_handler(PathRefused)
    async def refused(request, e):
        return answer(403, str(e), field=e.field)

    @app.exception_handler(NotFound)
    async def not_found(request, e):
        return answer(404, str(e))

    @app.exception_handler(st.QueueFull)
    async def full(request, e):
        return JSONResponse({"error": str(e)}, status_code=429, headers={"Retry-After": "5"})

    @app.exception_handler(BodyTooLarge)
    async def too_large(request, e):
        return answer(413, str(e))

    @app.exception_handler(LoraflowError)
    async def user_error(request, e):
        status = 422 if isinstance(e, (ConfigError, InputError, ModelLoadError)) else 400
        return answer(status, str(e))


def _job_routes(app, state: ServerState) -> None:
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

    @app.get("/api/health")
    async def health():
        current = state.worker.current
        return {"ok": True, "queue": state.store.count(st.QUEUED), "running": current.id if current else None,
                "loaded_models": state.models.loaded()}

    @app.get("/api/catalog")
    async def catalog():
        p = state.paths
        return {"models": list(BUILTIN_MODELS) + p.list("model"), "loras": p.list("LoRA"),
                "controlnets": p.list("ControlNet"), "schedulers": list(SAMPLERS), "job_kinds": list(SUBMITTABLE)}

    @app.get("/api/options/{kind}")
    async def options_schema(kind: str):
        return _schema(kind)

    @app.post("/api/jobs/{kind}", status_code=202)
    async def submit(kind: str, request: Request):
        if kind not in SUBMITTABLE:
            raise Invalid(f"unknown job kind '{kind}'; choose one of: {', '.join(SUBMITTABLE)}", "kind")
        body = await _json_body(request)
        payload = await asyncio.to_thread(_validated, kind, body, state)
        job = await asyncio.to_thread(state.submit, kind, payload, request.query_params.get("client_id"))
        return JSONResponse(_job_json(job), status_code=202)

    @app.get("/api/jobs")
    async def list_jobs(status: str | None = None, kind: str | None = None, limit: int = 50):
        statuses = tuple(s for s in status.split(",") if s) if status else None
        jobs = await asyncio.to_thread(state.store.list, statuses, kind, min(max(limit, 1), 1000))
        return {"jobs": [_job_json(j) for j in jobs]}

    @app.get("/api/jobs/{job_id}")
    async def get_job(job_id: str):
        return _job_json(_get(state, job_id))

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        job = _get(state, job_id)
        outcome = state.worker.cancel(job_id)
        if outcome is None:
            return JSONResponse({"error": f"job {job_id} already ended ({job.status})", "status": job.status}, status_code=409)
        return {"id": job_id, "status": outcome if job.status == st.QUEUED else "cancelling"}

    @app.post("/api/jobs/{job_id}/requeue", status_code=202)
    async def requeue(job_id: str):
        _get(state, job_id)
        try:
            job = state.store.requeue(job_id)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=409)
        state.worker.notify()
        return JSONResponse(_job_json(job), status_code=202)

    @app.delete("/api/jobs/{job_id}")
    async def delete(job_id: str):
        job = _get(state, job_id)
        if not state.store.delete(job_id):
            return JSONResponse({"error": f"job {job_id} is {job.status}; cancel it first"}, status_code=409)
        return {"id": job_id, "deleted": True}

    @app.get("/api/jobs/{job_id}/files/{name:path}")
    async def job_file(job_id: str, name: str):
        _get(state, job_id)
        path = safe_join(state.paths.outputs / "jobs" / job_id, name, "output")
        if not path.is_file():
            raise NotFound(f"job {job_id} has no file {name}")
        return FileResponse(path)

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        _get(state, job_id)
        listener = state.bus.listen(lambda e: e.get("job") == job_id)

        async def stream():
            try:
                job = state.store.get(job_id)  # the state now, then changes as they happen
                yield _sse("status", {"status": job.status, "progress": job.progress, "error": job.error,
                                      "result": job.result})
                if job.status in st.FINISHED:
                    return
                while True:
                    try:
                        event = await asyncio.wait_for(listener.queue.get(), timeout=15)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keep-alive\n\n"
                        continue
                    if event["type"] == "preview":
                        yield _sse("preview", {"jpeg": base64.b64encode(event["jpeg"]).decode()})
                        continue
                    yield _sse(event["type"], event["data"])
                    if event["type"] == "status" and event["data"].get("status") in st.FINISHED:
                        return
            finally:
                state.bus.close(listener)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _validated(kind: str, body: object, state: ServerState) -> dict:
    """The job kind's own checks, then the limits and the path policy over the whole payload (once),
    then the kind's checks that may only see confined paths."""
    job_kind = JOB_KINDS[kind]
    payload = job_kind.validate(body, state.paths)
    check_job_limits(kind, payload, state.limits)
    payload = confine_payload(kind, payload, state.paths)
    if job_kind.check_confined is not None:
        job_kind.check_confined(payload)
    return payload


def _get(state: ServerState, job_id: str) -> st.Job:
    job = state.store.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


async def _json_body(request) -> object:
    return parse_json(await request.body(), "request body")


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def _job_json(job: st.Job) -> dict:
    data = job.to_json()
    data["links"] = {"self": f"/api/jobs/{job.id}", "events": f"/api/jobs/{job.id}/events",
                     "cancel": f"/api/jobs/{job.id}/cancel"}
    return data


def _schema(kind: str) -> dict:
    if kind == "generate":
        from loraflow.generate.options import GenerateConfig as cls
    elif kind == "storyboard":
        from loraflow.generate.storyboard import StoryboardConfig as cls
    elif kind == "train":
        from loraflow.train.config import TrainConfig as cls
    else:
        raise NotFound(f"no options schema for '{kind}' (generate, storyboard, train)")
    return cls.model_json_schema()
