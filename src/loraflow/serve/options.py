"""Typed options of `loraflow serve` (flags and the Python API share them)."""
from __future__ import annotations

from loraflow.config import Options, opt


class ServeOptions(Options):
    host: str = opt("127.0.0.1", "address to bind; 0.0.0.0 exposes the server to the network (a warning is printed)")
    port: int = opt(7860, "TCP port (0 = pick a free one)", ge=0, le=65535)
    models_dir: str = opt("models", "base models, LoRAs (loras/), ControlNets (controlnet/); the only model files served")
    outputs_dir: str = opt("outputs", "images and job outputs; also holds the job database (jobs.sqlite)")
    data_dir: str | None = opt(None, "datasets for train / data-filter jobs (default: OUTPUTS_DIR/data)")
    db: str | None = opt(None, "job database file (default: OUTPUTS_DIR/jobs.sqlite)")
    auth_token: str | None = opt(None, "require `Authorization: Bearer TOKEN` on every API call")
    queue_size: int = opt(32, "most jobs waiting at once; more get HTTP 429", ge=1)
    model_cache_size: int = opt(1, "loaded models kept between jobs (LRU)", ge=1, le=4)
    max_body_mb: float = opt(16.0, "largest request body accepted (uploads included)", gt=0)
    max_image_pixels: int = opt(4096 * 4096, "largest uploaded image (width x height)", ge=64 * 64)
    cors_origins: list[str] = opt([], "origins allowed by CORS (off when empty)", aliases=("cors_origin",))
    device: str = opt("auto", "device jobs run on (cpu, cuda, auto)")
    log_level: str = opt("warning", "uvicorn log level")
