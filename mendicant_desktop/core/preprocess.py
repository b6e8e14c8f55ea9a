"""Image decoding and the reference preprocessing, in one place.

The app, the batch mode and the developer-side ``compression`` package all call these functions, so
the pixels the model sees at training, calibration and run time are produced by the same code.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import MEMORY_REASON, ImageLoadError

MODEL_SIZE: tuple[int, int] = (254, 254)
#: Refuse images above this many pixels before decoding them (decompression bombs).
#: 100 MP is well above any camera a clinic uses (a 4000x3000 phone photo is 12 MP).
DEFAULT_MAX_PIXELS = 100_000_000
_EXIF_ORIENTATION = 0x0112
#: Files larger than this are not read (no camera or scanner image a clinic uses comes near it).
MAX_FILE_BYTES = 1 << 30

ImageSource = Union[str, os.PathLike, bytes, Image.Image]

# A partially decoded image must never be scored: keep Pillow strict, whatever a caller set globally.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def read_image_file(path: str | os.PathLike, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a whole input file; every failure is an :class:`ImageLoadError` with a readable reason.

    Shared by :func:`load_image` and the batch pipeline (which hashes the same bytes it decodes).
    """
    name = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not hang a run; it is refused below as not a regular file.
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise ImageLoadError("is a folder, not an image file", name)
            if not stat.S_ISREG(st.st_mode):
                raise ImageLoadError("not a regular file", name)
            if st.st_size > max_bytes:
                raise ImageLoadError(f"file too large ({st.st_size / 2**20:.0f} MiB)", name)
            data = fh.read()
    except FileNotFoundError:
        raise ImageLoadError("file not found (missing or removed)", name) from None
    except PermissionError:
        raise ImageLoadError("permission denied", name) from None
    except IsADirectoryError:
        raise ImageLoadError("is a folder, not an image file", name) from None
    except OSError as exc:
        raise ImageLoadError(f"cannot read file: {exc.strerror or exc}", name) from None
    if not data:
        raise ImageLoadError("empty file (0 bytes)", name)
    return data


def _open(source: ImageSource) -> tuple[Image.Image, str | None]:
    if isinstance(source, Image.Image):
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageLoadError("empty file (0 bytes)")
        return Image.open(io.BytesIO(data)), None
    name = str(source)
    return Image.open(io.BytesIO(read_image_file(name))), name


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to RGB uint8, scaling high-bit-depth data instead of clipping it."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode == "F":
            top = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            top = 65535.0
        else:
            top = 255.0
        arr = np.clip(np.nan_to_num(arr) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        # Transparent areas become black, like the masked clinical crops the model is audited on.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"), dtype=np.uint8)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` fully into an RGB uint8 array (H, W, 3) with EXIF orientation applied.

    Raises :class:`ImageLoadError` with a human-readable reason for empty, missing, unreadable,
    truncated, corrupt, oversized (decompression bomb) and non-image inputs. Animated images give
    their first frame.
    """
    name = None if isinstance(source, (bytes, bytearray, memoryview, Image.Image)) else str(source)
    try:
        im, name = _open(source)
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageLoadError("image has no pixels", name)
        if w * h > max_pixels:
            raise ImageLoadError(
                f"image too large: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the {max_pixels / 1e6:.0f} MP limit "
                "(possible decompression bomb)",
                name,
            )
        with warnings.catch_warnings():
            # Our own pixel limit above is the policy; Pillow's warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            if im.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None):
                im = ImageOps.exif_transpose(im) or im
            rgb = _to_rgb8(im)
    except ImageLoadError as exc:
        if exc.path is None and name is not None:
            raise ImageLoadError(exc.reason, name) from None
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not a recognised image format", name) from None
    except Image.DecompressionBombError:
        raise ImageLoadError("image too large (decompression bomb)", name) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            reason = "truncated or incomplete image file"
        else:
            reason = f"corrupt image data ({msg})"
        raise ImageLoadError(reason, name) from None
    except MemoryError:
        raise ImageLoadError(MEMORY_REASON, name) from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageLoadError(f"unexpected decoded shape {rgb.shape}", name)
    return np.ascontiguousarray(rgb)


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF ``resize_bilinear`` with half-pixel centres: lower index, upper index, lerp weight."""
    # float32 arithmetic on purpose: TF and torch compute source coordinates in float32, and at a
    # 12x downscale float64 coordinates would differ from theirs by up to 0.05 grey levels.
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(src)
    lower = np.clip(floor, 0, in_size - 1).astype(np.intp)
    upper = np.clip(np.ceil(src), 0, in_size - 1).astype(np.intp)
    lerp = (src - floor).astype(np.float32)
    return lower, upper, lerp


def resize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing (``tf.image.resize`` default).

    ``img`` is (H, W, C) of any numeric dtype; returns float32 (size[0], size[1], C) without rounding,
    matching the reference pipeline that feeds 0..255 floats to the model. PIL's BILINEAR antialiases
    when downscaling and would shift the model's probabilities.
    """
    if img.ndim != 3:
        raise ValueError(f"expected an (H, W, C) array, got shape {img.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"invalid output size {size}")
    in_h, in_w = img.shape[:2]
    y0, y1, wy = _axis_weights(in_h, out_h)
    x0, x1, wx = _axis_weights(in_w, out_w)
    # Rows first, gathered before the float conversion: only 2*out_h rows of a (possibly 12 MP)
    # source are ever converted to float32.
    top = img[y0].astype(np.float32, copy=False)
    bot = img[y1].astype(np.float32, copy=False)
    rows = top + (bot - top) * wy[:, None, None]
    left = rows[:, x0]
    right = rows[:, x1]
    return np.ascontiguousarray(left + (right - left) * wx[None, :, None], dtype=np.float32)


def preprocess(img: np.ndarray, size: tuple[int, int] = MODEL_SIZE) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (size, 3) in 0..255, exactly what the model's input expects."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB (H, W, 3) image, got shape {img.shape}")
    return resize_bilinear(img, size)
