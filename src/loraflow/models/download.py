"""Explicit model download for users with a network (`loraflow models download ID`).
Nothing else in loraflow downloads; tests never call this."""
from __future__ import annotations

from pathlib import Path

from loraflow.errors import ModelLoadError

# Only what a diffusers pipeline needs: safetensors weights, configs, tokenizer files.
ALLOW_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*.safetensors.index.json", "*.py"]
IGNORE_PATTERNS = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx*", "*.fp16.*"]


def download_model(repo_id: str, out: str | None = None, hub: str = "huggingface", revision: str | None = None) -> Path:
    target = Path(out or Path("models") / repo_id.split("/")[-1])
    try:
        if hub == "modelscope":
            try:
                from modelscope import snapshot_download
            except ImportError:
                raise ModelLoadError("ModelScope downloads need `pip install 'loraflow[modelscope]'`") from None
            path = snapshot_download(repo_id, revision=revision, local_dir=str(target),
                                     allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)
        else:
            from huggingface_hub import snapshot_download

            path = snapshot_download(repo_id, revision=revision, local_dir=str(target),
                                     allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)
    except ModelLoadError:
        raise
    except Exception as e:  # network errors come in many library-specific types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot download {repo_id} from {hub}: {first} (no network? download elsewhere and copy the folder)") from None
    return Path(path)
