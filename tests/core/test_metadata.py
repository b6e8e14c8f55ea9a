from __future__ import annotations

import numpy as np
import pytest

from mendicant_desktop.core.errors import MetadataError
from mendicant_desktop.core.metadata import (
    AGE_MEAN,
    Metadata,
    encode_metadata,
    normalize_sex,
    normalize_site,
    parse_age,
)


def test_encoding_layout_known_values():
    v = encode_metadata(Metadata(age=45, sex="male", site="trunk"))
    expected = np.array([0, 1, 0, 0, 0, 0, 1, 0, 0.5, 0], np.float32)
    np.testing.assert_array_equal(v, expected)
    assert v.dtype == np.float32 and v.shape == (10,)


def test_missing_age_uses_training_mean_and_flag():
    v = encode_metadata(Metadata(sex="female", site="arm"))
    assert v[9] == 1.0
    assert v[8] == pytest.approx(AGE_MEAN / 90.0)
    assert v[8] == pytest.approx(51.9 / 90.0, abs=1e-3)
    np.testing.assert_array_equal(v[:8], [1, 0, 0, 1, 0, 0, 0, 0])


def test_none_is_all_unknown():
    v = encode_metadata(None)
    np.testing.assert_array_equal(v[:8], [0, 0, 1, 0, 0, 0, 0, 1])
    assert v[9] == 1.0


@pytest.mark.parametrize(
    "raw,site",
    [("FOREARM", "arm"), ("upper extremity", "arm"), ("HAND", "arm"), ("NOSE", "head-or-neck"),
     ("scalp", "head-or-neck"), ("LIP", "head-or-neck"), ("lower extremity", "leg-or-genital"),
     ("THIGH", "leg-or-genital"), ("genital", "leg-or-genital"), ("BACK", "trunk"), ("abdomen", "trunk"),
     ("anterior torso", "trunk"), ("acral", "unknown"), ("moon", "unknown"), ("", "unknown"), (None, "unknown")],
)
def test_site_spellings(raw, site):
    assert normalize_site(raw) == site


@pytest.mark.parametrize("raw,sex", [("MALE", "male"), ("f", "female"), ("Female", "female"), ("x", "unknown"),
                                     (None, "unknown")])
def test_sex_spellings(raw, sex):
    assert normalize_sex(raw) == sex


def test_age_parsing():
    assert parse_age("") is None and parse_age("NA") is None and parse_age(float("nan")) is None
    assert parse_age("42") == 42.0
    with pytest.raises(MetadataError, match="not a number"):
        parse_age("forty")
    with pytest.raises(MetadataError, match="outside"):
        Metadata(age=150)


def test_metadata_is_frozen_and_normalised():
    m = Metadata(age="30", sex="M", site="FACE")
    assert (m.age, m.sex, m.site) == (30.0, "male", "head-or-neck")
    with pytest.raises(AttributeError):
        m.age = 3  # type: ignore[misc]
