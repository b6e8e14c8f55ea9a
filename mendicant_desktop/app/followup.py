"""Follow-up of one lesion: how its malignancy score moved between visits, and whether it crossed the threshold.

Qt-free, so a report, the CLI or the server can say the same thing the window's follow-up card says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class VisitScore:
    date: str  # ISO date of the visit
    malignancy: float
    label: str = ""  # e.g. the image name


@dataclass(frozen=True)
class Change:
    """The change from the previous visit to the latest one."""

    previous: VisitScore
    latest: VisitScore
    threshold: float

    @property
    def delta(self) -> float:
        """Change of the malignancy score, in score units (0.05 = 5 percentage points)."""
        return self.latest.malignancy - self.previous.malignancy

    @property
    def crossed_up(self) -> bool:
        """Below the threshold at the previous visit, at or above it now: flag it."""
        return self.previous.malignancy < self.threshold <= self.latest.malignancy

    @property
    def crossed_down(self) -> bool:
        return self.latest.malignancy < self.threshold <= self.previous.malignancy

    def text(self, pct=lambda p: f"{100 * p:.1f}%") -> str:
        d = 100 * self.delta
        word = "rose" if d > 0 else "fell" if d < 0 else "did not change"
        s = (f"The malignancy score {word} from {pct(self.previous.malignancy)} ({self.previous.date}) to "
             f"{pct(self.latest.malignancy)} ({self.latest.date})")
        s += f", {abs(d):.1f} percentage points." if d else "."
        if self.crossed_up:
            s += f" It crossed the {pct(self.threshold)} threshold into the HIGH band."
        elif self.crossed_down:
            s += f" It fell below the {pct(self.threshold)} threshold."
        return s


def ordered(visits: Sequence[VisitScore]) -> list[VisitScore]:
    """By date (a stable sort: visits of the same day keep the order they were taken)."""
    return sorted(visits, key=lambda v: v.date)


def latest_change(visits: Sequence[VisitScore], threshold: float) -> Change | None:
    """The change into the latest visit, or None with fewer than two visits."""
    vs = ordered(visits)
    return Change(vs[-2], vs[-1], threshold) if len(vs) >= 2 else None


def change_into(visits: Sequence[VisitScore], index: int, threshold: float) -> Change | None:
    """The change into visit ``index`` of the date-ordered list (None for the first)."""
    vs = ordered(visits)
    return Change(vs[index - 1], vs[index], threshold) if 0 < index < len(vs) else None
