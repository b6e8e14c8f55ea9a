"""The V–VI caution: in the row of any image whose skin type is estimated as V or VI, never for I–IV/unknown."""

import dataclasses

from mendicant_desktop.app.assessment import assess
from mendicant_desktop.app.model import load_engine
from mendicant_desktop.app.quality import FST_CAUTION, fst_caution
from mendicant_desktop.core.results import SkinToneEstimate
from tests.gui.conftest import lesion_image


def test_fst_caution_values():
    assert fst_caution("V") == fst_caution("VI") == FST_CAUTION
    assert "V–VI" in FST_CAUTION and "unknown" in FST_CAUTION
    for t in ("I", "II", "III", "IV", "unknown", None):
        assert fst_caution(t) is None


def test_the_caution_reaches_the_batch_row(tiny_bundle, tmp_path):
    a = assess(load_engine(tiny_bundle, threads=1), lesion_image(tmp_path / "x.jpg"))
    assert FST_CAUTION not in a.warnings
    for fst, expect in (("V", True), ("VI", True), ("IV", False)):
        b = dataclasses.replace(a, skin=SkinToneEstimate(fst=fst, ita=-40.0, skin_fraction=0.8))
        assert (FST_CAUTION in b.warnings) is expect
        assert (FST_CAUTION in b.row()["warnings"]) is expect
