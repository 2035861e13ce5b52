"""ComfyUI API-format workflows (`{"id": {"class_type", "inputs"}}`, links `[node_id, output_index]`)
run on loraflow's own functions, so ComfyUI API clients work against `loraflow serve`.

    nodes.py     the core node set, each a thin declarative shell (inputs, outputs, `run`)
    values.py    what flows along links: model references, conditioning, latents, images
    graph.py     checks a prompt (node types, link types, values) -> per-node errors like ComfyUI
    executor.py  runs a checked prompt in the worker, skipping nodes whose inputs did not change
    sampling.py  the functions behind KSampler, VAE and image nodes; control.py: ControlNet
    routes.py    /prompt, /history, /view, /object_info, /ws, /queue, /interrupt, /upload/image
    export.py    `loraflow workflow export`: a LoRA + prompt -> a workflow ComfyUI can open
"""
