"""`loraflow serve` and `loraflow workflow export`: parse flags, call plain functions.
fastapi / uvicorn / torch are imported only when a command runs."""
from __future__ import annotations

import argparse
import sys

from loraflow.serve.options import ServeOptions


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="HTTP API + job queue + ComfyUI-compatible workflows + web UI",
                              description="Serve loraflow over HTTP (binds to 127.0.0.1 unless --host is given).")
    p.add_argument("--config", help="YAML/JSON file with serve options")
    ServeOptions.add_arguments(p)
    p.set_defaults(func=run_serve)

    w = subparsers.add_parser("workflow", help="ComfyUI workflows: export a LoRA + prompt as a workflow JSON")
    ws = w.add_subparsers(dest="workflow_command", metavar="COMMAND", required=True)
    e = ws.add_parser("export", help="write a ComfyUI workflow (API format + .ui.json) for a LoRA and a prompt")
    e.add_argument("--lora", help="LoRA file; the workflow names it by file name (put it in ComfyUI/models/loras)")
    e.add_argument("--lora-weight", type=float, default=1.0, help="LoRA strength (default: 1.0)")
    e.add_argument("--prompt", required=True, help="positive prompt")
    e.add_argument("--negative-prompt", default="", help="negative prompt")
    e.add_argument("--model", default="sd_xl_base_1.0.safetensors",
                   help="checkpoint name as ComfyUI lists it (default: sd_xl_base_1.0.safetensors)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--num-inference-steps", "--steps", dest="steps", type=int, default=30)
    e.add_argument("--guidance-scale", "--cfg", dest="cfg", type=float, default=5.0)
    e.add_argument("--sampler", default="euler", help="KSampler sampler_name (euler, dpmpp_2m, ...)")
    e.add_argument("--scheduler", default="normal", help="KSampler scheduler (normal, karras)")
    e.add_argument("--width", type=int, default=1024)
    e.add_argument("--height", type=int, default=1024)
    e.add_argument("--out", required=True, help="output file (API format); the UI format goes to OUT.ui.json")
    e.set_defaults(func=run_export)


def run_serve(args: argparse.Namespace) -> int:
    options = ServeOptions.from_cli(args, args.config)
    from loraflow.serve.server import serve

    serve(options)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from loraflow.errors import ConfigError
    from loraflow.serve.comfy.export import export_workflow
    from loraflow.serve.comfy.nodes import SAMPLER_NAMES, SCHEDULER_NAMES

    if args.sampler not in SAMPLER_NAMES:
        raise ConfigError(f"unknown --sampler '{args.sampler}'; choose one of: {', '.join(SAMPLER_NAMES)}")
    if args.scheduler not in SCHEDULER_NAMES:
        raise ConfigError(f"unknown --scheduler '{args.scheduler}'; choose one of: {', '.join(SCHEDULER_NAMES)}")
    from loraflow.serve.comfy.export import api_workflow
    from loraflow.serve.comfy.graph import check_widget_values

    settings = dict(negative_prompt=args.negative_prompt, lora_weight=args.lora_weight, seed=args.seed,
                    steps=args.steps, cfg=args.cfg, sampler_name=args.sampler, scheduler=args.scheduler,
                    width=args.width, height=args.height)
    # the nodes' own ranges (ComfyUI's): a workflow ComfyUI would refuse is never written
    problem = check_widget_values(api_workflow(args.model, "x" if args.lora else None, args.prompt, **settings))
    if problem:
        raise ConfigError(f"workflow export: {problem}")
    paths = export_workflow(args.out, args.lora, args.prompt, args.model, **settings)
    for path in paths:
        print(path, file=sys.stdout)
    return 0
