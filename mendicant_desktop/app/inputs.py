"""Input discovery for every front end: one extension list, a content check, one walk.

``--batch``, the GUI's folder drop and Open dialog, the labels of ``--audit`` and the server all find images
with these functions, so the same folder gives the same inputs everywhere.

Rules (documented in ``docs/batch.md``):

* A PATH named on the command line is always an input if it is a file, whatever its name or content
  (a non-image gives an error row). A folder is walked recursively, in sorted order.
* Inside folders, a file is an input when its extension is an image extension in any case
  (``.jpg .jpeg .png .bmp .gif .tif .tiff .webp``) or when its first bytes are an image signature
  (a JPEG saved without extension is found; ``labels.csv`` is not). Its content decides how it is
  decoded: an HTML page named ``.jpg`` becomes an error row, a PNG named ``.jpg`` is scored.
* Hidden entries (names starting with ``.``) and special files (FIFOs, sockets, devices) inside
  folders are skipped.
* Folder symlinks are followed, but each folder is walked once (device + inode), so symlink loops
  and overlapping PATHs never visit a file twice. File symlinks are inputs of their own (one row
  per directory entry), so a folder of symlinks to the same image gives one row per link.
* Things that look like inputs but cannot be used give an :class:`InputItem` with ``error`` set:
  a folder named like an image (its contents are still walked), a folder that cannot be listed,
  a broken or looping symlink named like an image, a PATH that does not exist.

Only the walk's bookkeeping is kept in memory (visited folders and the PATHs given), never the list
of files, so memory does not grow with the number of inputs.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: The image extensions (lower case, matched in any case), in the order a labels name without one tries them.
IMAGE_EXTENSION_ORDER: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(IMAGE_EXTENSION_ORDER)
#: The formats those extensions and the content check stand for, as users name them.
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WebP")

#: Bytes read from a file without an image extension to recognise an image signature.
_SNIFF_BYTES = 32
#: Why a folder named like an image is listed (its contents are still walked).
_FOLDER_NAMED_LIKE_IMAGE = ("is a folder named like an image, not an image file "
                            "(its contents are scored as inputs of their own)")


@dataclass(frozen=True)
class InputItem:
    """One input: ``path`` exactly as found (as given, or joined from the walked folder).

    ``error`` is a human-readable reason when the entry cannot be an image (no decoding is tried).
    """

    path: str
    error: str | None = None


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def looks_like_image(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) starts with a supported image signature."""
    if head.startswith(b"\xff\xd8\xff"):  # JPEG
        return True
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return True
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return True
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[:2] == b"BM" and len(head) >= 18:  # BMP: check the DIB header size too ("BM" alone is weak)
        dib = int.from_bytes(head[14:18], "little")
        return dib in (12, 16, 40, 52, 56, 64, 108, 124)
    return False


def _sniff(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return looks_like_image(fh.read(_SNIFF_BYTES))
    except OSError:
        return False


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _Walker:
    def __init__(self, include_hidden: bool) -> None:
        self.include_hidden = include_hidden
        self.seen_dirs: set[tuple[int, int]] = set()
        # Files named on the command line: (parent dev, parent ino, name) -> already yielded?
        self.explicit: dict[tuple[int, int, str], bool] = {}

    @staticmethod
    def _entry_key(parent_st: os.stat_result, name: str) -> tuple[int, int, str]:
        return (parent_st.st_dev, parent_st.st_ino, name)

    def explicit_key(self, path: str) -> tuple[int, int, str] | None:
        parent = os.path.dirname(os.path.abspath(path)) or os.sep
        try:
            pst = os.stat(parent)
        except OSError:
            return None
        return self._entry_key(pst, os.path.basename(os.path.abspath(path)))

    def claim(self, key: tuple[int, int, str] | None) -> bool:
        """True if this entry should be yielded now (not yielded before via another route)."""
        if key is None or key not in self.explicit:
            return True
        if self.explicit[key]:
            return False
        self.explicit[key] = True
        return True

    def enter(self, st: os.stat_result) -> bool:
        """Mark a folder as walked; False when it was already (a symlink loop or overlapping PATHs)."""
        key = (st.st_dev, st.st_ino)
        if key in self.seen_dirs:
            return False
        self.seen_dirs.add(key)
        return True

    def walk(self, root: str) -> Iterator[InputItem]:
        """Walk ``root`` (already entered) and the folders below it that were not walked before."""
        stack: list[str] = [root]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                yield InputItem(folder, f"cannot list folder: {_os_reason(exc)}")
                continue
            subdirs: list[str] = []
            for entry in entries:
                name = entry.name
                if name.startswith(".") and not self.include_hidden:
                    continue
                path = os.path.join(folder, name)
                try:
                    est = entry.stat()  # follows symlinks
                except OSError as exc:
                    if has_image_extension(name) and self.claim(self._entry_key(st, name)):
                        why = "broken or looping symbolic link" if entry.is_symlink() else "cannot read file"
                        yield InputItem(path, f"{why}: {_os_reason(exc)}")
                    continue
                if stat.S_ISDIR(est.st_mode):
                    if not self.enter(est):
                        continue  # never walk a folder twice, never follow a loop
                    if has_image_extension(name):
                        yield InputItem(path, _FOLDER_NAMED_LIKE_IMAGE)
                    subdirs.append(path)
                    continue
                if not stat.S_ISREG(est.st_mode):
                    continue
                if not (has_image_extension(name) or (est.st_size > 0 and _sniff(path))):
                    continue
                if self.claim(self._entry_key(st, name)):
                    yield InputItem(path)
            stack.extend(reversed(subdirs))  # depth-first, in sorted order


def iter_inputs(
    paths: Iterable[str | os.PathLike],
    *,
    include_hidden: bool = False,
    exclude: Iterable[str | os.PathLike] = (),
) -> Iterator[InputItem]:
    """Yield the inputs under ``paths`` lazily, each once, in a deterministic order.

    Folders in ``exclude`` (for example the ``--saliency-dir`` being written) are never walked.
    """
    items = [os.fspath(p) for p in paths]
    walker = _Walker(include_hidden)
    for ex in exclude:
        with contextlib.suppress(OSError):
            walker.enter(os.stat(ex))
    for p in items:
        try:
            if not os.path.isdir(p):
                key = walker.explicit_key(p)
                if key is not None:
                    walker.explicit.setdefault(key, False)
        except OSError:
            pass
    for p in items:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            if os.path.islink(p):
                yield InputItem(p, "broken symbolic link (its target does not exist)")
            else:
                yield InputItem(p, "file not found")
            continue
        except OSError as exc:
            yield InputItem(p, f"cannot read file: {_os_reason(exc)}")
            continue
        if stat.S_ISDIR(st.st_mode):
            if not walker.enter(st):
                continue
            if has_image_extension(p.rstrip("/" + os.sep)):
                yield InputItem(p, _FOLDER_NAMED_LIKE_IMAGE)
            yield from walker.walk(p)
        elif walker.claim(walker.explicit_key(p)):
            if stat.S_ISREG(st.st_mode):
                yield InputItem(p)
            else:
                yield InputItem(p, "not a regular file")


def count_inputs(paths: Iterable[str | os.PathLike], **kwargs) -> int:
    """How many items :func:`iter_inputs` will yield (a cheap pre-pass for the progress total)."""
    return sum(1 for _ in iter_inputs(paths, **kwargs))


def dialog_filter() -> str:
    """A file-dialog filter ("Images (*.jpg ...)") listing :data:`IMAGE_EXTENSIONS` in both cases."""
    exts = IMAGE_EXTENSION_ORDER
    patterns = [f"*{e}" for e in exts] + [f"*{e.upper()}" for e in exts]
    return f"Images ({' '.join(patterns)});;All files (*)"


def extensions_text(sep: str = ", ") -> str:
    """The image extensions for messages and help: "jpg, jpeg, png, ..." in a fixed order."""
    return sep.join(e.lstrip(".") for e in IMAGE_EXTENSION_ORDER)


def formats_text(last: str = "or") -> str:
    """"JPEG, PNG, TIFF, BMP, GIF or WebP" (``last`` joins the final two) for messages."""
    return ", ".join(IMAGE_FORMATS[:-1]) + f" {last} {IMAGE_FORMATS[-1]}"


def resolve_image(images_dir: str | os.PathLike, name: str) -> str:
    """The file a labels row names: ``name`` under ``images_dir`` (absolute names kept).

    Backslashes count as separators (labels written on Windows). A name without extension that does not
    exist as is finds ``name`` plus the first image extension (any case) that does, as HAM10000's
    ``image_id`` column needs.
    """
    name = name.strip().replace("\\", "/")
    path = name if os.path.isabs(name) else os.path.join(os.fspath(images_dir), *name.split("/"))
    if not os.path.splitext(path)[1] and not os.path.exists(path):
        for ext in IMAGE_EXTENSION_ORDER:
            for cand in (path + ext, path + ext.upper()):
                if os.path.isfile(cand):
                    return cand
    return path
