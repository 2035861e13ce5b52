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
    auth_token: str | None = opt(None, "require `Authorization: Bearer TOKEN` (or ?token=) on every API call; a "
                                       "server bound beyond loopback makes one up and prints it, as Jupyter does",
                                 aliases=("token",))
    allowed_host: list[str] = opt([], "extra Host names to serve (besides localhost, 127.0.0.1, [::1] and --host); "
                                      "other Host headers get 403 (DNS rebinding); '*' serves any",
                                  aliases=("allowed_hosts",))
    queue_size: int = opt(32, "most jobs waiting at once; more get HTTP 429", ge=1)
    model_cache_size: int = opt(1, "loaded models kept between jobs (LRU)", ge=1, le=4)
    max_body_mb: float = opt(16.0, "largest request body accepted (uploads included)", gt=0)
    max_image_pixels: int = opt(4096 * 4096, "largest uploaded image (width x height)", ge=64 * 64)
    cors_origins: list[str] = opt([], "origins allowed by CORS (off when empty)", aliases=("cors_origin",))
    device: str = opt("auto", "device jobs run on (cpu, cuda, auto)")
    # ---- bounds on one job (checked at submission: 422 naming the field) ---------------------
    # 4096² per image ran for minutes on a GPU
    max_pixels: int = opt(2048 * 2048, "largest generated image (width x height)", ge=64 * 64)
    max_steps: int = opt(1000, "most denoising steps per image", ge=1)  # the CLI's own bound
    max_batch: int = opt(16, "most images per pipeline call / per training step", ge=1)
    max_images: int = opt(64, "most images per job", ge=1)
    max_grid_pixels: int = opt(8192 * 8192, "largest storyboard grid (width x height)", ge=64 * 64)  # RGB: 200 MB
    max_scenes: int = opt(64, "most scenes per storyboard", ge=1)
    max_train_steps: int = opt(100_000, "most optimizer steps per train job", ge=1)
    max_workflow_nodes: int = opt(500, "most nodes in a ComfyUI workflow", ge=1)
    job_time_limit: float = opt(8 * 3600.0, "seconds a job may run before it is cancelled (0: no limit)", ge=0)
    cancel_grace: float = opt(60.0, "seconds a cancelled job has to stop before the worker gives up on it and "
                                    "runs the next job", gt=0)
    log_level: str = opt("warning", "uvicorn log level")
