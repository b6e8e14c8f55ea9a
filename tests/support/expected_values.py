"""Fixed expected values for the bundled model: the inputs, and the script that (re)writes the fixture.

The fixture ``tests/fixtures/bundled_expected.json`` holds, for the model bundled in ``resources/models``, the
exact ``--batch`` rows (probabilities, malignancy, top class, skin type, warnings, sizes, error reasons) of:

* a handful of real images from ``../shared/data`` (ISIC dermoscopy, PAD-UFES-20 clinical with their recorded
  age/sex/site as metadata) -- never copied into the repository, only named;
* awkward inputs generated here, byte-for-byte deterministic from formulas (no random numbers, lossless
  formats): 16-bit greyscale PNG, RGBA PNG, palette PNG, an EXIF-rotated TIFF, a tiny BMP (a "too small"
  warning), a masked crop on black (a "mostly not skin" warning and an unknown skin type), and the bad inputs
  every front end must turn into an error row (empty, HTML named .jpg, truncated PNG, decompression bomb).

The values were fixed once by running this script; ``tests/app/test_expected_values.py`` checks the app against
them. When the bundled model is replaced, that test fails and names the new model: regenerate the fixture with

    python -m tests.support.expected_values            # from the repository root

and commit it with the model (review the diff: every changed figure is a changed prediction). ONNX Runtime's INT8
results depend on the CPU (VNNI or not), so the fixture records the CPU features it was made on; the test holds
the probabilities to 1e-6 on a CPU with the same features and to a looser bound elsewhere.
"""

from __future__ import annotations

import io
import json
import os
import platform
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mendicant_desktop.core.inference import cpu_features

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "bundled_expected.json"
SHARED_DATA = Path(os.environ.get("MENDICANT_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()

#: (dataset folder, image file) of the real images; PAD rows carry their recorded metadata.
REAL_IMAGES: tuple[tuple[str, str], ...] = (
    ("isic_dermoscopy", "ISIC_0000006.jpg"),
    ("isic_dermoscopy", "ISIC_0011726.jpg"),
    ("isic_dermoscopy", "ISIC_0000146.jpg"),
    ("pad_ufes20_clinical", "PAT_100_393_898.jpg"),
    ("pad_ufes20_clinical", "PAT_1013_82_876.jpg"),
    ("pad_ufes20_clinical", "PAT_109_868_113.jpg"),
)
#: Cells whose values are floats from the model (compared with a tolerance); every other cell is exact.
MODEL_FLOAT_CELLS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC", "malignancy")


def _skin_with_lesion(w: int, h: int) -> np.ndarray:
    """Skin-coloured RGB with a dark oval lesion and a fine texture, from formulas only."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot((yy - h / 2) / (0.30 * h), (xx - w / 2) / (0.36 * w))
    tex = 6.0 * np.sin(xx / 3.1) * np.cos(yy / 4.3)
    skin = np.stack([214 + tex, 168 + tex, 140 + tex], axis=-1)
    lesion = np.stack([96 + tex, 62 + tex, 48 + tex], axis=-1)
    inside = np.clip((1.0 - r) * 8.0, 0.0, 1.0)[..., None]
    return np.clip(skin * (1 - inside) + lesion * inside, 0, 255).round().astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _save(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def awkward_inputs(folder: Path) -> dict[str, Path]:
    """Write the awkward inputs into ``folder``; returns name -> path, in a fixed order."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _skin_with_lesion(320, 240)
    grey16 = (rgb.mean(axis=2) * 257).astype(np.uint16)
    rgba = np.dstack([rgb, np.where(_skin_with_lesion(320, 240)[..., 0] < 150, 255, 128).astype(np.uint8)])
    masked = np.where((_skin_with_lesion(300, 300)[..., :1] < 150), _skin_with_lesion(300, 300), 0).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown: 320x240 becomes 240x320
    bomb_ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    files: dict[str, bytes] = {
        "grey16.png": _save(Image.fromarray(grey16), "PNG"),
        "rgba.png": _save(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.png": _save(Image.fromarray(rgb).quantize(64, method=Image.Quantize.MEDIANCUT, dither=0), "PNG"),
        "rotated.tif": _save(Image.fromarray(rgb), "TIFF", exif=exif.tobytes()),
        "tiny.bmp": _save(Image.fromarray(_skin_with_lesion(96, 72)), "BMP"),
        "masked_on_black.png": _save(Image.fromarray(masked), "PNG"),
        "empty.jpg": b"",
        "html.jpg": b"<!doctype html><html><body>not an image</body></html>\n",
        "truncated.png": _save(Image.fromarray(rgb), "PNG")[:3000],
        "bomb.png": b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", bomb_ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024, 9)) + _png_chunk(b"IEND", b""),
    }
    out = {}
    for name, data in files.items():
        p = folder / name
        p.write_bytes(data)
        out[name] = p
    return out


def pad_metadata_csv() -> str:
    """The PAD images' recorded age, sex and site, as a ``--metadata`` table (joined by file name)."""
    import csv

    wanted = {name for ds, name in REAL_IMAGES if ds == "pad_ufes20_clinical"}
    lines = ["image,age,sex,site"]
    with open(SHARED_DATA / "pad_ufes20_clinical" / "labels.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["image"] in wanted:
                lines.append(f"{r['image']},{r['age']},{r['gender']},{r['region']}")
    return "\n".join(lines) + "\n"


def score(engine: Any, paths: list[Path], metadata_text: str | None) -> list[dict[str, Any]]:
    """The ``--batch --metadata`` rows of ``paths`` through the app layer (the path every front end uses)."""
    from mendicant_desktop.app.rows import columns_for
    from mendicant_desktop.app.scoring import score_paths
    from mendicant_desktop.app.tables import parse_metadata_text

    meta = parse_metadata_text(metadata_text, "metadata.csv") if metadata_text else None
    return list(score_paths(paths, engine, metadata=meta, workers=1, columns=columns_for(metadata=True)))


def portable(row: dict[str, Any], root: Path) -> dict[str, Any]:
    """A row with its image path relative to ``root`` (the fixture must not name this machine's folders)."""
    out = dict(row)
    out["image"] = Path(row["image"]).relative_to(root).as_posix()
    return out


def main() -> int:
    import tempfile

    import onnxruntime

    from mendicant_desktop.app.model import load_engine, resolve_card

    engine = load_engine(resolve_card(), threads=1)
    if not (SHARED_DATA / "isic_dermoscopy" / "labels.csv").is_file():
        print(f"expected_values: {SHARED_DATA} not found; the real images are needed", file=sys.stderr)
        return 2
    real = [SHARED_DATA / ds / "images" / name for ds, name in REAL_IMAGES]
    real_rows = [portable(r, SHARED_DATA) for r in score(engine, real, pad_metadata_csv())]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        awk = awkward_inputs(folder)
        awk_rows = [portable(r, folder) for r in score(engine, list(awk.values()), None)]
    fixture = {
        "about": "Expected --batch rows of the bundled model; regenerate with python -m tests.support.expected_values",
        "model": {"name": engine.card.name, "version": engine.card.version, "sha256": engine.card.sha256},
        "made_on": {"cpu_features": cpu_features(), "machine": platform.machine(),
                    "onnxruntime": onnxruntime.__version__},
        "real_images": real_rows,
        "awkward_inputs": awk_rows,
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE.relative_to(REPO)}: {len(real_rows)} real images, {len(awk_rows)} awkward inputs, "
          f"model {engine.card.name} {engine.card.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
