"""tfimb.report: every run of a full table gets a line no other run has."""

from tfimb import report


def test_line_styles_are_distinct_for_a_full_table():
    styles = report._line_styles(17)
    pairs = {(style["color"], style["linestyle"]) for style in styles}
    assert len(pairs) == 17
    # The first ten runs keep matplotlib's plain solid lines.
    assert {style["linestyle"] for style in styles[:10]} == {"-"}
