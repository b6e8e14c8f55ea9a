"""Subset the ICU data library that Qt links (``libicudata.so.NN``, ~32 MB) to what a desktop app with an
English UI plausibly touches (~12 MB). Opt-in from ``build.spec`` (``MENDICANT_SPEC_TRIM_ICU=1``), Linux only.

Removed item trees (locale *display* data that Qt takes from its own CLDR tables, and legacy codecs):
``unit/`` ``curr/`` ``lang/`` ``region/`` ``translit/`` ``rbnf/`` ``zone/`` (time-zone display names; the
time-zone rules ``zoneinfo64.res`` stay) and every ``*.cnv`` legacy converter (UTF-8/16/32 and Latin-1 are
built into Qt and ICU). Collation, break iteration, normalisation, locales' core data stay.
Known effects: ``QTimeZone.displayName`` returns an empty string, ``QStringDecoder("Shift_JIS")`` and other
legacy codecs are invalid. The app uses neither (it draws text with Qt and reads images with Pillow).

The ``.dat`` package ("CmnD" common data) is rewritten here byte-for-byte per item (ICU's own ``icupkg`` from
an older ICU release corrupts newer items), then turned into a shared library exporting ``icudtNN_dat``
with ``genccode``-style assembly written by this script and linked with ``cc``.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

DROP_TREES = ("unit/", "curr/", "lang/", "region/", "translit/", "rbnf/")
KEEP_ZONE = {"zone/root.res", "zone/res_index.res", "zone/tzdbNames.res", "zone/pool.res"}


def _elf_symbol(lib: Path) -> tuple[str, int, int]:
    """(symbol, file offset, size) of the ``icudtNN_dat`` blob in ``lib`` (via readelf)."""
    syms = subprocess.run(["readelf", "-s", "-W", str(lib)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^\s*\d+:\s+([0-9a-f]+)\s+(0x[0-9a-f]+|\d+)\s+OBJECT\s+GLOBAL\s+\S+\s+\d+\s+(icudt\d+_dat)\s*$",
                  syms, re.M)
    if not m:
        raise ValueError(f"{lib.name}: no icudtNN_dat symbol")
    addr, size, name = int(m.group(1), 16), int(m.group(2), 0), m.group(3)
    secs = subprocess.run(["readelf", "-S", "-W", str(lib)], capture_output=True, text=True, check=True).stdout
    for line in secs.splitlines():
        parts = line.replace("[ ", "[").split()
        if len(parts) > 5 and parts[2] == "PROGBITS":
            s_addr, s_off, s_size = int(parts[3], 16), int(parts[4], 16), int(parts[5], 16)
            if s_addr <= addr < s_addr + s_size:
                return name, addr - s_addr + s_off, size
    raise ValueError(f"{lib.name}: cannot map {name} to a file offset")


def _keep(item: str) -> bool:
    if item.startswith(DROP_TREES) or item.endswith(".cnv"):
        return False
    return not (item.startswith("zone/") and item not in KEEP_ZONE)


def subset_dat(data: bytes) -> tuple[bytes, int, int]:
    """(new .dat bytes, items kept, items dropped)."""
    header_size = struct.unpack_from("<H", data, 0)[0]
    if data[2:4] != b"\xda\x27" or data[12:16] != b"CmnD" or data[8] != 0:
        raise ValueError("not a little-endian ICU common data package")
    toc = header_size
    count = struct.unpack_from("<I", data, toc)[0]
    entries = [struct.unpack_from("<II", data, toc + 4 + 8 * i) for i in range(count)]
    names = []
    for name_off, _ in entries:
        end = data.index(b"\0", toc + name_off)
        names.append(data[toc + name_off:end].decode("ascii"))
    offs = [d for _, d in entries] + [len(data) - toc]
    items = [(names[i], data[toc + offs[i]: toc + offs[i + 1]]) for i in range(count)]
    prefix = names[0].split("/", 1)[0] + "/"
    kept = [(n, b) for n, b in items if _keep(n[len(prefix):])]
    # layout: header | count | entries | names | pad16 | items (each 16-aligned)
    n = len(kept)
    names_blob = b"".join(nm.encode("ascii") + b"\0" for nm, _ in kept)
    names_start = 4 + 8 * n
    data_start = (names_start + len(names_blob) + 15) & ~15
    out_entries, body, name_pos, pos = [], bytearray(), names_start, data_start
    for nm, blob in kept:
        out_entries.append(struct.pack("<II", name_pos, pos))
        name_pos += len(nm) + 1
        pad = (-len(blob)) % 16
        body += blob + b"\0" * pad
        pos += len(blob) + pad
    toc_bytes = struct.pack("<I", n) + b"".join(out_entries) + names_blob
    toc_bytes += b"\0" * (data_start - len(toc_bytes))
    return data[:header_size] + toc_bytes + bytes(body), n, count - n


def build_subset_library(lib: Path, out_dir: Path) -> Path:
    """Write a subset copy of ``lib`` (same soname and symbol) into ``out_dir``; return its path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise FileNotFoundError("no C compiler (cc/gcc) to link the ICU data library")
    sym, off, size = _elf_symbol(lib)
    raw = lib.read_bytes()[off:off + size]
    new, kept, dropped = subset_dat(raw)
    out_dir.mkdir(parents=True, exist_ok=True)
    dat = out_dir / f"{sym}.bin"
    dat.write_bytes(new)
    asm = out_dir / f"{sym}.S"
    asm.write_text(
        f'\t.section .rodata\n\t.globl {sym}\n\t.type {sym}, @object\n\t.balign 16\n{sym}:\n'
        f'\t.incbin "{dat.name}"\n\t.size {sym}, {len(new)}\n\t.section .note.GNU-stack,"",@progbits\n')
    soname = lib.name
    target = out_dir / soname
    subprocess.run([cc, "-shared", "-nostdlib", "-Wl,-soname," + soname, "-Wl,-z,noexecstack",
                    "-o", str(target), asm.name], check=True, cwd=out_dir)
    (out_dir / "icu-subset.txt").write_text(f"{lib} {size} -> {len(new)} bytes; items kept {kept}, "
                                            f"dropped {dropped}\n")
    return target
