"""Reference images -> control maps, with the preprocessors that need no weights built in.

The built-in ones follow sd-webui-controlnet's (`annotator/` and `scripts/processor.py`), so a
map made here looks like the one A1111 would make:

* `canny`   — `cv2.Canny(image, low, high)` on the RGB image (A1111 defaults 100 / 200),
* `lineart` — A1111's `lineart_standard`: how much darker each pixel is than its Gaussian blur
              (sigma 6), normalised by the median edge strength; white lines on black,
* `color`   — A1111's `t2ia_color_grid`: shrink 64x (bicubic) then enlarge (nearest): a palette map,
* `tile`    — the image itself (A1111's `tile_resample` at down-sampling rate 1),
* `depth`, `pose`, `seg`, `raw` — the image already is the control map. With `annotator_dir` and
  `controlnet_aux` installed, depth and pose photos are annotated from that local folder instead;
  nothing is ever downloaded.

Every image is first fitted to the output size as A1111's default "Crop and Resize" does: scaled
to cover, then centre-cropped. A size change is logged, so the user knows the picture moved.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from loraflow.errors import ConfigError, InputError
from loraflow.images import to_rgb

log = logging.getLogger(__name__)

RESIZE_MODE = "Crop and Resize"  # A1111 ControlNet's default (and only) resize mode here
CANNY_DEFAULTS = (100, 200)  # A1111's Threshold A / Threshold B for canny
# A1111 module names, for the infotext (`Module: ...`); "none" = the image is the map
MODULE_NAMES = {"canny": "canny", "lineart": "lineart_standard", "color": "t2ia_color_grid",
                "tile": "tile_resample", "depth": "none", "pose": "none", "seg": "none", "raw": "none"}
ANNOTATED_MODULE_NAMES = {"depth": "depth_midas", "pose": "openpose"}


def load_image(path: str | os.PathLike, label: str, mode: str = "RGB"):
    """Open an image fully (so a truncated file fails here), as `mode`; one-line InputError."""
    from PIL import Image

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{label}: image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            # colour references go through the one decoder (EXIF turn, alpha on white, 16-bit)
            return to_rgb(image) if mode == "RGB" else image.convert(mode)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable/corrupt files
        raise InputError(f"{label}: cannot read image {path}: {exc}") from None


def fit_to_size(image, width: int, height: int, label: str = "image"):
    """A1111's "Crop and Resize": scale to cover width x height, then crop the centre."""
    import cv2
    import numpy as np
    from PIL import Image

    w, h = image.size
    if (w, h) == (width, height):
        return image
    log.warning("%s is %dx%d, resized to %dx%d (%s)", label, w, h, width, height, RESIZE_MODE)
    k = max(width / w, height / h)
    new_w, new_h = max(width, round(w * k)), max(height, round(h * k))
    array = np.asarray(image)
    interpolation = cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC
    array = cv2.resize(array, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return Image.fromarray(np.ascontiguousarray(array[top:top + height, left:left + width]))


# ---- built-in preprocessors: (H, W, 3) uint8 RGB -> (H, W, 3) uint8 map ----------------------
def canny(array, low: int = CANNY_DEFAULTS[0], high: int = CANNY_DEFAULTS[1]):
    import cv2
    import numpy as np

    edges = cv2.Canny(array, low, high)  # (H, W) 0/255
    return np.repeat(edges[:, :, None], 3, axis=2)


def lineart(array):
    import cv2
    import numpy as np

    x = array.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)  # how much darker than the surroundings
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    lines = (intensity * 127).clip(0, 255).astype(np.uint8)
    return np.repeat(lines[:, :, None], 3, axis=2)


def color_grid(array):
    import cv2

    h, w = array.shape[:2]
    small = cv2.resize(array, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def identity(array):
    return array


BUILT_IN = {"canny": canny, "lineart": lineart, "color": color_grid, "tile": identity,
            "depth": identity, "pose": identity, "seg": identity, "raw": identity}


def preprocess(kind: str, array, *, canny_thresholds: tuple[int, int] = CANNY_DEFAULTS,
               annotator_dir: str | None = None):
    """The control map for one fitted reference image (RGB uint8 array in, same shape out)."""
    if annotator_dir and kind in ANNOTATED_MODULE_NAMES:
        return annotate(kind, array, annotator_dir)
    if kind == "canny":
        return canny(array, *canny_thresholds)
    return BUILT_IN[kind](array)


def module_name(kind: str, annotator_dir: str | None = None) -> str:
    if annotator_dir and kind in ANNOTATED_MODULE_NAMES:
        return ANNOTATED_MODULE_NAMES[kind]
    return MODULE_NAMES[kind]


def annotate(kind: str, array, annotator_dir: str) -> Any:
    """Depth (MiDaS) or pose (OpenPose) through controlnet_aux, from a local folder only."""
    folder = Path(annotator_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"annotator_dir not found: {folder} (a local folder of annotator weights, "
                          "e.g. a copy of lllyasviel/Annotators)")
    try:
        import controlnet_aux
    except ImportError:
        raise ConfigError(f"{kind} annotation needs the controlnet_aux package (pip install controlnet-aux); "
                          f"or pass an already-made {kind} map as the control image and no annotator_dir") from None
    import numpy as np

    os.environ["HF_HUB_OFFLINE"] = "1"  # a missing file must fail, never download
    detector_class = controlnet_aux.MidasDetector if kind == "depth" else controlnet_aux.OpenposeDetector
    try:
        detector = detector_class.from_pretrained(str(folder))
    except Exception as exc:  # controlnet_aux raises hub/IO errors of many kinds
        raise ConfigError(f"cannot load the {kind} annotator from {folder}: {exc}") from None
    h, w = array.shape[:2]
    result = detector(array, output_type="np", detect_resolution=max(h, w), image_resolution=max(h, w))
    return np.asarray(result, dtype=np.uint8)[:h, :w]


def make_control_map(kind: str, source, width: int, height: int, label: str, *,
                     canny_thresholds: tuple[int, int] = CANNY_DEFAULTS, annotator_dir: str | None = None):
    """Reference file (or PIL image) -> fitted, preprocessed control map as a PIL RGB image."""
    import numpy as np
    from PIL import Image

    image = load_image(source, label) if isinstance(source, (str, os.PathLike)) else to_rgb(source)
    fitted = np.asarray(fit_to_size(image, width, height, f"{label} ({source if isinstance(source, (str, os.PathLike)) else 'image'})"))
    return Image.fromarray(preprocess(kind, np.ascontiguousarray(fitted), canny_thresholds=canny_thresholds,
                                      annotator_dir=annotator_dir))
