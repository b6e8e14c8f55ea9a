"""The one downscaler of the app: display copies, thumbnails, saliency overlays and the quality checks.

The model never sees these copies (it gets :func:`core.preprocess.preprocess`); they only have to be fast
and good-looking.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def downscale(rgb: np.ndarray, side: int) -> np.ndarray:
    """A copy with the longest side <= ``side`` (``rgb`` itself when it already fits).

    Pillow's integer box ``reduce`` does the bulk (fast, area-averaging, releases the GIL); a bilinear resize
    finishes only when the reduced copy is still larger than ``side`` (i.e. for small reductions).
    """
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    k = -(-max(h, w) // side)  # ceil
    if k >= 2:
        im = im.reduce(k)
    if max(im.size) > side:
        s = side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BILINEAR)
    return np.asarray(im)
