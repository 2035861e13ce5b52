"""LoRA files: read, write, convert, and put into pipelines.

- `kohya_keys`: module names, diffusers <-> kohya (SGM block names for SDXL and Kolors).
- `formats`: the kohya / diffusers / peft state-dict layouts and exact conversions between them.
- `metadata`: kohya `ss_*`, `sshs_*` hashes and `modelspec.*` training metadata.
- `save`: `save_lora` (what training calls), atomic writes.
- `load`: `read_lora`, `to_diffusers_state_dict`, `convert_lora`, family checks.
- `lycoris`: LoCon / LoHa / LoKr / DoRA / full-diff modules, merged into weights (reversibly).
- `apply`: `apply_loras` / `remove_loras` on a diffusers pipeline (what generation calls).
- `cli`: `loraflow lora info|convert`.
"""
