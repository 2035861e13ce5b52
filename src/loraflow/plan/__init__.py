"""`loraflow plan`: full-size memory, FLOPs and step time of a training or generation run, from
configs alone, on the meta device (no GPU, no weights, no data).

This package is the planning machinery, on the models layer: the full-size architecture from
shipped configs (architecture.py), the live-storage accountant (accountant.py), CUDA kernel rules
(cuda_rules.py), GPUs (gpus.py), low-VRAM modes (modes.py) and the report (report.py). The plans
themselves live with what they plan, so each runs its own layer's real code: `train/plan.py`
(one training step through train's setup, objective and optimizer; `train/fit.py` stops a CUDA run
that would not fit) and `generate/plan.py` (one denoising step plus VAE decode). `plan/cli.py` is
the command's thin shell on top.

The package is also called: `loraflow.plan("train", config, gpu="RTX 4090")` is `loraflow.api.plan`.
"""
from loraflow import callable_package

callable_package(__name__, "loraflow.api", "plan")
