"""Runs a checked ComfyUI prompt in the worker thread, node by node in dependency order.

A node whose class, values and upstream nodes are unchanged since the last run is not executed
again: its cached outputs are reused and it is reported in `execution_cached` (ComfyUI's behaviour).
File inputs (checkpoint, LoRA, image names) join the cache key with their size, mtime and inode, so
a changed or replaced file is picked up (and `GenerationSession.set_loras` re-applies a changed
LoRA). Messages follow ComfyUI's websocket protocol: execution_start,
execution_cached, executing, progress, executed, execution_success | execution_error |
execution_interrupted.
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
from pathlib import Path

from loraflow.errors import LoraflowError
from loraflow.models.hashing import file_stamp
from loraflow.serve.comfy.graph import is_link, normalize, topological_order
from loraflow.serve.comfy.nodes import NODES
from loraflow.serve.cancel import cancel_points_in
from loraflow.serve.comfy.values import CachedNode, ModelRef, Shown, WorkflowJob
from loraflow.serve.context import JobCancelled, JobContext


class WorkflowFailed(LoraflowError):
    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def run_prompt(ctx: JobContext, workflow: WorkflowJob) -> dict:
    """Run `workflow` with the worker's JobContext `ctx` (paths, models, state.comfy_cache, reporting)."""
    prompt = normalize(workflow.prompt)
    prompt_id = ctx.job.id
    order = execution_order(prompt, workflow.outputs)
    keys = cache_keys(prompt, order, ctx.paths)
    cache = ctx.state.comfy_cache
    cached = [nid for nid in order if nid in cache and cache[nid].key == keys[nid]]
    hidden = {"prompt": prompt, "extra_pnginfo": workflow.extra_data.get("extra_pnginfo")}
    messages: list = []

    def send(type_: str, **data):
        data["prompt_id"] = prompt_id
        messages.append([type_, {**data, "timestamp": int(time.time() * 1000)}] if type_.startswith("execution_") else [type_, data])
        ctx.emit(type_, **data)

    send("execution_start", timestamp=int(time.time() * 1000))
    send("execution_cached", nodes=cached, timestamp=int(time.time() * 1000))
    values: dict[str, tuple] = {}
    ui_outputs: dict[str, dict] = {}
    executed: list[str] = []
    for nid in order:
        if nid in cached:
            values[nid] = cache[nid].outputs
            if cache[nid].ui:
                ui_outputs[nid] = cache[nid].ui
            continue
        node = prompt[nid]
        send("executing", node=nid, display_node=nid)
        cls = NODES[node["class_type"]]
        inputs = {k: values[v[0]][v[1]] if is_link(v) else v for k, v in node["inputs"].items() if k in cls.INPUTS}
        if cls.OUTPUT_NODE:
            inputs.update(hidden)
        try:
            ctx.check_cancel()
            pipes = [v.session(ctx).pipe for v in inputs.values() if isinstance(v, ModelRef)]
            with cancel_points_in(pipes, ctx.check_cancel):  # a cancel lands inside a long VAE decode too
                out = cls().run(ctx, nid, **inputs)
        except JobCancelled:
            send("execution_interrupted", node_id=nid, node_type=node["class_type"], executed=executed)
            ctx.emit("executing", node=None, display_node=None, prompt_id=prompt_id)  # ComfyUI's closing message
            raise
        except Exception as e:  # any failure is reported on its node, the server keeps running
            result = _history_result(prompt_id, ui_outputs, messages, "error", executed, cached)
            send("execution_error", node_id=nid, node_type=node["class_type"], executed=executed,
                 exception_message=str(e), exception_type=type(e).__name__,
                 traceback=[] if isinstance(e, LoraflowError) else traceback.format_exc().splitlines(),
                 current_inputs={}, current_outputs=[])
            ctx.emit("executing", node=None, display_node=None, prompt_id=prompt_id)  # sent after errors too
            result["status"]["messages"] = messages
            result["error"] = {"node_id": nid, "node_type": node["class_type"], "message": str(e)}
            raise WorkflowFailed(f"node {nid} ({node['class_type']}): {e}", result) from None
        ui = None
        if isinstance(out, Shown):
            out, ui = out.result, out.ui
        values[nid] = tuple(out)
        cache[nid] = CachedNode(keys[nid], values[nid], ui)
        executed.append(nid)
        if ui:
            ui_outputs[nid] = ui
            send("executed", node=nid, display_node=nid, output=ui)
    ctx.emit("executing", node=None, display_node=None, prompt_id=prompt_id)
    send("execution_success", timestamp=int(time.time() * 1000))
    return _history_result(prompt_id, ui_outputs, messages, "success", executed, cached)


def _history_result(prompt_id, outputs, messages, status, executed, cached) -> dict:
    return {"outputs": outputs, "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {nid: {"node_id": nid, "display_node": nid} for nid in outputs},
            "executed": executed, "cached": cached}


def execution_order(prompt: dict, outputs: list[str]) -> list[str]:
    """Every node the outputs need, each after the nodes it links to (`graph.topological_order`)."""
    return topological_order(prompt, outputs)


def cache_keys(prompt: dict, order: list[str], paths) -> dict[str, str]:
    """A hash per node of its class, its values, its file stamps and its upstream keys."""
    keys: dict[str, str] = {}
    for nid in order:
        node = prompt[nid]
        cls = NODES[node["class_type"]]
        parts = {"class": node["class_type"], "inputs": {}}
        for name, value in sorted(node["inputs"].items()):
            if name not in cls.INPUTS:
                continue
            parts["inputs"][name] = ["link", keys[value[0]], value[1]] if is_link(value) else value
            if name in cls.FILE_INPUTS and not is_link(value):
                parts.setdefault("files", {})[name] = _file_stamp(paths, cls.FILE_INPUTS[name], value)
        keys[nid] = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return keys


def _file_stamp(paths, kind: str, name: str):
    try:
        path = {"model": lambda: paths.model(name), "LoRA": lambda: paths.lora(name),
                "ControlNet": lambda: paths.controlnet(name), "IP-Adapter": lambda: paths.ip_adapter(name),
                "CLIP vision": lambda: paths.clip_vision(name),
                "input": lambda: paths.output_file(name, kind="input")}[kind]()
    except (LoraflowError, KeyError):
        return None
    p = Path(path)
    if not p.exists():
        return str(path)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file()]
        return [str(p), [(f.name, *file_stamp(f)) for f in sorted(files)]]
    # rewritten in place: size or mtime changes; replaced by rename: the inode does
    return [str(p), *file_stamp(p)]

