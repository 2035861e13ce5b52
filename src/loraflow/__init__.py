"""loraflow: from a raw image collection to a fine-tuned text-to-image LoRA and an illustrated story."""

__version__ = "0.1.0"
