"""Input fixtures for the batch tests: every bad-input kind of issue 4 and every legal-but-odd image.

``make_input_folder(dst)`` writes them into a temp folder and returns the expected status of each
input (path relative to ``dst`` -> 'ok' | 'error'). The tests at the bottom check the fixtures
themselves (the bomb is small on disk, the modes are what their names say).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth skin-coloured RGB image with a dark central blob (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    base = np.stack([200 - 30 * r, 150 - 20 * r, 120 - 10 * r], axis=-1)
    base[r < 0.18] *= 0.45
    base += rng.normal(0, 3, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(w: int = 50_000, h: int = 50_000) -> bytes:
    """A valid PNG header claiming w x h pixels, a few hundred bytes on disk."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def exif_rotated_jpeg(w: int = 120, h: int = 80) -> bytes:
    """A w x h JPEG whose EXIF orientation (6: rotate 90 CW) makes it h x w when shown."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(photo(w, h, 3), exif=exif.tobytes())


def make_input_folder(dst: Path, real_images: list[Path] | None = None, *, big: bool = True) -> dict[str, str]:
    """Write the mixed input folder; return {relative path: expected status}."""
    dst.mkdir(parents=True, exist_ok=True)
    exp: dict[str, str] = {}

    def put(rel: str, data: bytes, status: str) -> Path:
        p = dst / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        exp[rel] = status
        return p

    def save(rel: str, im: Image.Image, status: str = "ok", **kw) -> None:
        buf = io.BytesIO()
        fmt = kw.pop("format", None) or {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "tif": "TIFF",
                                          "webp": "WEBP", "bmp": "BMP"}[rel.rsplit(".", 1)[-1].lower()]
        im.save(buf, format=fmt, **kw)
        put(rel, buf.getvalue(), status)

    rgb = photo(160, 120)
    good = jpeg_bytes(rgb)
    # --- real images, or generated ones when ../shared/data is absent
    if real_images:
        for i, src in enumerate(real_images):
            put(f"real/{i:02d}_{src.name}", src.read_bytes(), "ok")
    else:
        for i in range(4):
            put(f"real/{i:02d}_generated.jpg", jpeg_bytes(photo(180 + 40 * i, 180, seed=10 + i)), "ok")
    # --- legal but unusual: must be scored
    if big:
        put("huge 4000x3000.jpg", jpeg_bytes(photo(4000, 3000, 1)), "ok")
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("grey16.png", Image.fromarray(photo(64, 48)[..., 0].astype(np.uint16) * 257).convert("I;16"))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), "RGBA"))
    save("grey.jpg", Image.fromarray(rgb).convert("L"))
    frames = [Image.fromarray(photo(80, 60, s)).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", buf.getvalue(), "ok")
    save("scan.tif", Image.fromarray(rgb))
    save("phone.webp", Image.fromarray(rgb), quality=80)
    save("old.bmp", Image.fromarray(rgb))
    put("rotated_exif.jpg", exif_rotated_jpeg(), "ok")
    put("name with spaces.jpg", good, "ok")
    put("nön-äscii 皮膚.JPG", good, "ok")
    put("UPPER.JPEG", good, "ok")
    put("png_named.jpg", (lambda b: (Image.fromarray(rgb).save(b, format="PNG"), b.getvalue())[1])(io.BytesIO()),
        "ok")
    put("no_extension_jpeg", good, "ok")  # found by its content
    # --- bad inputs: must give status=error rows
    put("empty.jpg", b"", "error")
    put("truncated.jpg", good[: len(good) // 2], "error")
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    pb = bytearray(png.getvalue())
    idat = pb.find(b"IDAT")
    pb[idat + 40: idat + 80] = bytes(40)  # corrupt the compressed data (CRC no longer matches)
    put("corrupt.png", bytes(pb), "error")
    put("page.jpg", b"<!DOCTYPE html><html><body>Not found</body></html>\n", "error")
    put("bomb.png", bomb_png(), "error")
    (dst / "folder.jpg").mkdir()
    exp["folder.jpg"] = "error"
    put("folder.jpg/inside.png", png.getvalue(), "ok")  # a folder named like an image is still walked
    # --- things that are not inputs at all
    (dst / "notes.txt").write_text("not an image, not an input\n")
    (dst / ".hidden.jpg").write_bytes(good)
    # --- symlinks: a loop back to the root (never followed twice), a self-loop file, a link to a file
    (dst / "loop").mkdir()
    os.symlink("..", dst / "loop" / "back_to_root")
    os.symlink("self_loop.jpg", dst / "self_loop.jpg")
    exp["self_loop.jpg"] = "error"
    os.symlink("cmyk.jpg", dst / "link_to_cmyk.jpg")
    exp["link_to_cmyk.jpg"] = "ok"
    # --- unreadable: chmod 000 only works when not running as root
    if not IS_ROOT:
        p = put("unreadable.jpg", good, "error")
        p.chmod(0)
    return exp


def real_image_sample(shared: Path, n_each: int = 3) -> list[Path]:
    out = []
    for ds in ("isic_dermoscopy", "pad_ufes20_clinical"):
        out.extend(sorted((shared / ds / "images").iterdir())[:n_each])
    return out


def cleanup(folder: Path) -> None:
    for p in folder.rglob("*"):
        if not p.is_symlink():
            with contextlib.suppress(OSError):
                p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- fixture self-checks


def test_bomb_is_small_on_disk_and_claims_50000_squared():
    data = bomb_png()
    assert len(data) < 1000
    assert struct.unpack(">II", data[16:24]) == (50_000, 50_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))


def test_fixture_modes_are_what_their_names_say(tmp_path):
    make_input_folder(tmp_path, big=False)
    modes = {}
    for name in ("cmyk.jpg", "grey16.png", "palette.png", "rgba.png", "grey.jpg", "animated.gif", "scan.tif",
                 "phone.webp", "rotated_exif.jpg"):
        with Image.open(tmp_path / name) as im:
            modes[name] = (im.format, im.mode, getattr(im, "n_frames", 1), im.getexif().get(0x0112))
    assert modes["cmyk.jpg"][1] == "CMYK"
    assert modes["grey16.png"][1].startswith("I")
    assert modes["palette.png"][1] == "P"
    assert modes["rgba.png"][1] == "RGBA"
    assert modes["grey.jpg"][1] == "L"
    assert modes["animated.gif"][2] == 3
    assert modes["scan.tif"][0] == "TIFF" and modes["phone.webp"][0] == "WEBP"
    assert modes["rotated_exif.jpg"][3] == 6


@pytest.mark.skipif(IS_ROOT, reason="running as root: chmod 000 does not stop root from reading a file")
def test_unreadable_fixture_is_unreadable(tmp_path):
    make_input_folder(tmp_path, big=False)
    with pytest.raises(PermissionError):
        (tmp_path / "unreadable.jpg").read_bytes()
