"""Synthetic inputs shared by tests: a skin-coloured photo with a dark round lesion, and a schema-1 case store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np


def skin(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A float (h, w, 3) light-skin background with mild noise."""
    rng = np.random.default_rng(seed)
    return np.clip(np.array([215, 170, 145], np.float32) + rng.normal(0, 8, (h, w, 3)), 0, 255)


def spot(img: np.ndarray, r: float) -> np.ndarray:
    """``img`` with a dark brown disc of radius ``r`` at the centre, as uint8."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r * r] = (80, 50, 40)
    return img.astype(np.uint8)


def write_schema1_store(path: Path, lesion_label: str) -> sqlite3.Connection:
    """A case store as the first release (schema 1) wrote it: one patient, one lesion, one scored visit. Returns
    the open connection (the caller closes it)."""
    from mendicant_desktop.app.store import migrate

    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=1) == 1
    conn.execute("INSERT INTO patients(code, created) VALUES ('P-OLD001', '2025-05-01T10:00:00+00:00')")
    conn.execute("INSERT INTO lesions(patient_id, label, site, created) VALUES (1, ?, 'arm', '2025-05-01')",
                 (lesion_label,))  # fmt: skip
    conn.execute("INSERT INTO visits(lesion_id, name, status, metadata, created, updated, malignancy, risk) "
                 "VALUES (1, 'old.jpg', 'done', '{\"age\": 40}', '2025-05-01T10:00:00+00:00', "
                 "'2025-05-01T10:00:00+00:00', 0.2, 'high')")
    return conn
