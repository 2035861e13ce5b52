"""Module names LoRA tests target (a module of its own: `conftest` is not importable by name)."""

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]  # what training targets by default
WIDE = ATTENTION + ["ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2", "conv_shortcut",
                    "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv"]
TEXT = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
