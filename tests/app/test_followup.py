"""Follow-up arithmetic: change between visits and the threshold crossing, against values fixed by hand."""

from mendicant_desktop.app.followup import VisitScore, change_into, latest_change, ordered


def test_rise_across_the_threshold_is_flagged():
    vs = [VisitScore("2026-06-01", 0.08), VisitScore("2025-12-01", 0.05), VisitScore("2026-12-01", 0.21)]
    assert [v.date for v in ordered(vs)] == ["2025-12-01", "2026-06-01", "2026-12-01"]
    c = latest_change(vs, 0.13)
    assert c.previous.malignancy == 0.08 and c.latest.malignancy == 0.21
    assert round(c.delta, 6) == 0.13 and c.crossed_up and not c.crossed_down
    assert c.text() == ("The malignancy score rose from 8.0% (2026-06-01) to 21.0% (2026-12-01), 13.0 percentage "
                        "points. It crossed the 13.0% threshold into the HIGH band.")
    first = change_into(vs, 1, 0.13)
    assert round(first.delta, 6) == 0.03 and not first.crossed_up
    assert change_into(vs, 0, 0.13) is None


def test_a_rise_that_stays_below_or_above_is_not_a_crossing():
    assert not latest_change([VisitScore("a", 0.02), VisitScore("b", 0.12)], 0.13).crossed_up
    assert not latest_change([VisitScore("a", 0.20), VisitScore("b", 0.60)], 0.13).crossed_up
    assert latest_change([VisitScore("a", 0.13), VisitScore("b", 0.5)], 0.13).crossed_up is False  # was already HIGH
    assert latest_change([VisitScore("a", 0.1299), VisitScore("b", 0.13)], 0.13).crossed_up  # at the threshold: HIGH
    down = latest_change([VisitScore("a", 0.3), VisitScore("b", 0.1)], 0.13)
    assert down.crossed_down and "fell below" in down.text()
    assert latest_change([VisitScore("a", 0.3)], 0.13) is None
