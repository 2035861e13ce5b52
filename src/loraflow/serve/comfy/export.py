"""`loraflow workflow export`: a trained LoRA + a prompt -> ComfyUI's default text-to-image graph
(CheckpointLoaderSimple -> LoraLoader -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler ->
VAEDecode -> SaveImage), in API format (for POST /prompt) and UI format (to open in ComfyUI)."""
from __future__ import annotations

from pathlib import Path
from loraflow.atomic import atomic_write_text


def api_workflow(ckpt_name: str, lora_name: str | None, prompt: str, negative_prompt: str = "", *,
                 lora_weight: float = 1.0, seed: int = 0, steps: int = 30, cfg: float = 5.0,
                 sampler_name: str = "euler", scheduler: str = "normal", width: int = 1024, height: int = 1024,
                 filename_prefix: str = "loraflow") -> dict:
    model, clip = ["4", 0], ["4", 1]
    graph = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}}}
    if lora_name:
        graph["10"] = {"class_type": "LoraLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": lora_name, "strength_model": lora_weight,
            "strength_clip": lora_weight}}
        model, clip = ["10", 0], ["10", 1]
    graph.update({
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative_prompt, "clip": clip}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name,
            "scheduler": scheduler, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": filename_prefix, "images": ["8", 0]}},
    })
    return graph


def ui_workflow(api: dict) -> dict:
    """The litegraph "workflow" JSON ComfyUI's editor saves: nodes with widget values and typed links.
    Built from the API graph with the node definitions (so widget order matches /object_info)."""
    from loraflow.serve.comfy.graph import is_link
    from loraflow.serve.comfy.nodes import NODES

    ids = {nid: int(nid) for nid in api}
    nodes, links = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    for nid, node in api.items():
        for name, value in node["inputs"].items():
            if is_link(value):
                link_id = len(links) + 1
                src_cls = NODES[api[value[0]]["class_type"]]
                links.append([link_id, ids[value[0]], value[1], ids[nid], None, src_cls.OUTPUTS[value[1]]])
                out_links.setdefault((ids[value[0]], value[1]), []).append(link_id)
    column = {"CheckpointLoaderSimple": 0, "LoraLoader": 1, "CLIPTextEncode": 2, "EmptyLatentImage": 2,
              "KSampler": 3, "VAEDecode": 4, "SaveImage": 5}
    rows: dict[int, int] = {}
    for order, (nid, node) in enumerate(api.items()):
        cls = NODES[node["class_type"]]
        col = column.get(node["class_type"], 3)
        row = rows.get(col, 0)
        rows[col] = row + 1
        inputs, widgets, slot = [], [], 0
        for name, spec in cls.INPUTS.items():
            value = node["inputs"].get(name)
            if is_link(value):
                link_id = next(l[0] for l in links if l[3] == ids[nid] and l[1] == ids[value[0]] and l[2] == value[1]
                               and l[4] is None)
                for l in links:
                    if l[0] == link_id:
                        l[4] = slot
                inputs.append({"name": name, "type": spec.type, "link": link_id})
                slot += 1
            elif spec.type not in ("MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "CONTROL_NET"):
                widgets.append(value)
                if name in ("seed", "noise_seed"):
                    widgets.append("fixed")  # control_after_generate
        outputs = [{"name": n, "type": t, "links": out_links.get((ids[nid], i), []), "slot_index": i}
                   for i, (t, n) in enumerate(zip(cls.OUTPUTS, cls.OUTPUT_NAMES or cls.OUTPUTS))]
        nodes.append({"id": ids[nid], "type": node["class_type"], "pos": [40 + 380 * col, 40 + 260 * row],
                      "size": [340, 200], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                      "outputs": outputs, "properties": {"Node name for S&R": node["class_type"]},
                      "widgets_values": widgets})
    return {"last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def export_workflow(out: str | Path, lora: str | None, prompt: str, model: str, **kwargs) -> list[Path]:
    """Write OUT (API format) and OUT with `.ui.json` (UI format); returns both paths."""
    import json

    api = api_workflow(model, Path(lora).name if lora else None, prompt, **kwargs)
    out = Path(out)
    ui_path = out.with_name(out.stem + ".ui.json")
    atomic_write_text(out, json.dumps(api, indent=2, ensure_ascii=False))
    atomic_write_text(ui_path, json.dumps(ui_workflow(api), indent=2, ensure_ascii=False))
    return [out, ui_path]
