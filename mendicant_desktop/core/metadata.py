"""Patient metadata and its 10-value encoding for the model's metadata branch.

Layout (from the reference network's training code): sex one-hot (female, male, unknown), body site
one-hot (arm, head-or-neck, leg-or-genital, trunk, unknown), age/90, age-missing flag. A missing age
is first replaced by the training mean (51.9 years); leaving it at 0 shifts probabilities by ~0.16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import MetadataError

SEXES: tuple[str, ...] = ("female", "male", "unknown")
SITES: tuple[str, ...] = ("arm", "head-or-neck", "leg-or-genital", "trunk", "unknown")
AGE_MEAN = 51.90180032733224
AGE_MAX = 90.0
META_SIZE = 10

_SEX_ALIASES = {
    "female": "female", "f": "female", "woman": "female", "w": "female",
    "male": "male", "m": "male", "man": "male",
}

#: Body-site spellings from HAM10000 (``localization``), PAD-UFES-20 (``region``), ISIC
#: (``anatom_site_general``) and plain English, mapped onto the model's five sites.
SITE_ALIASES: dict[str, str] = {
    # arm
    "arm": "arm", "upper extremity": "arm", "upper_extremity": "arm", "upper limb": "arm",
    "forearm": "arm", "hand": "arm", "hands": "arm", "finger": "arm", "shoulder": "arm",
    "elbow": "arm", "wrist": "arm", "palm": "arm", "palms/soles": "unknown",
    # head or neck
    "head-or-neck": "head-or-neck", "head/neck": "head-or-neck", "head neck": "head-or-neck",
    "head": "head-or-neck", "neck": "head-or-neck", "face": "head-or-neck", "scalp": "head-or-neck",
    "ear": "head-or-neck", "nose": "head-or-neck", "lip": "head-or-neck", "cheek": "head-or-neck",
    "forehead": "head-or-neck", "oral/genital": "unknown",
    # leg or genital
    "leg-or-genital": "leg-or-genital", "leg": "leg-or-genital", "lower extremity": "leg-or-genital",
    "lower_extremity": "leg-or-genital", "lower limb": "leg-or-genital", "thigh": "leg-or-genital",
    "foot": "leg-or-genital", "feet": "leg-or-genital", "knee": "leg-or-genital",
    "genital": "leg-or-genital", "genitals": "leg-or-genital", "sole": "leg-or-genital",
    "toe": "leg-or-genital", "shin": "leg-or-genital", "calf": "leg-or-genital",
    # trunk
    "trunk": "trunk", "torso": "trunk", "back": "trunk", "chest": "trunk", "abdomen": "trunk",
    "anterior torso": "trunk", "posterior torso": "trunk", "lateral torso": "trunk", "belly": "trunk",
    # explicitly unknown
    "unknown": "unknown", "acral": "unknown", "": "unknown", "na": "unknown", "n/a": "unknown",
    "none": "unknown", "nan": "unknown",
}


def normalize_sex(value: object) -> str:
    """Map a sex/gender spelling onto the model's categories; anything unrecognised is 'unknown'."""
    if value is None:
        return "unknown"
    key = str(value).strip().lower()
    return _SEX_ALIASES.get(key, "unknown")


def normalize_site(value: object) -> str:
    """Map a body-site spelling (HAM, PAD, ISIC or plain English) onto the model's five sites."""
    if value is None:
        return "unknown"
    key = " ".join(str(value).strip().lower().replace("_", " ").split())
    if key in SITE_ALIASES:
        return SITE_ALIASES[key]
    key2 = key.replace(" ", "-")
    return SITE_ALIASES.get(key2, "unknown")


def parse_age(value: object) -> float | None:
    """Parse an age in years; empty/NA gives None. Non-numbers and impossible ages raise MetadataError."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        age = float(value)
    else:
        text = str(value).strip()
        if text.lower() in ("", "na", "n/a", "nan", "none", "unknown", "?"):
            return None
        try:
            age = float(text)
        except ValueError:
            raise MetadataError(f"age {text!r} is not a number") from None
    if math.isnan(age):
        return None
    if not 0 <= age <= 120:
        raise MetadataError(f"age {age:g} is outside 0-120 years")
    return age


@dataclass(frozen=True)
class Metadata:
    """Optional patient metadata. Values are normalised on construction; bad ages raise."""

    age: float | None = None
    sex: str = "unknown"
    site: str = "unknown"

    def __post_init__(self) -> None:
        object.__setattr__(self, "age", parse_age(self.age))
        sex = self.sex if self.sex in SEXES else normalize_sex(self.sex)
        site = self.site if self.site in SITES else normalize_site(self.site)
        object.__setattr__(self, "sex", sex)
        object.__setattr__(self, "site", site)

    @property
    def is_empty(self) -> bool:
        return self.age is None and self.sex == "unknown" and self.site == "unknown"


def encode_metadata(meta: Metadata | None) -> np.ndarray:
    """Encode metadata as the model's 10 float32 values (see module docstring)."""
    meta = meta or Metadata()
    vec = np.zeros(META_SIZE, dtype=np.float32)
    vec[SEXES.index(meta.sex)] = 1.0
    vec[3 + SITES.index(meta.site)] = 1.0
    if meta.age is None:
        vec[8] = AGE_MEAN / AGE_MAX
        vec[9] = 1.0
    else:
        vec[8] = meta.age / AGE_MAX
        vec[9] = 0.0
    return vec
