"""tfimb.experiments.report: every run of a full table gets a line no other run has."""

import pytest

from tfimb.experiments import report


def test_line_styles_are_distinct_for_a_full_table():
    styles = report._line_styles(17)
    pairs = {(style["color"], style["linestyle"]) for style in styles}
    assert len(pairs) == 17
    # The first ten runs keep matplotlib's plain solid lines.
    assert {style["linestyle"] for style in styles[:10]} == {"-"}


def test_unreadable_results_are_named_and_the_readable_runs_reported(tmp_path):
    import json

    from tfimb import cli

    good = tmp_path / "good"
    good.mkdir()
    (good / "results.json").write_text(json.dumps({
        "accuracy": {"majority": 0.9, "minority": 0.5, "all": 0.8},
        "config": {"loss": {"name": "softmax_cross_entropy"}, "imbalance": {}}}))
    truncated, foreign = tmp_path / "truncated", tmp_path / "foreign"
    for path, text in ((truncated, '{"accuracy": {"all": 0.'), (foreign, '{"other": 1}')):
        path.mkdir()
        (path / "results.json").write_text(text)
    with pytest.raises(report.ReportError) as info:
        report.report([good, truncated, foreign], tmp_path / "out")
    message = str(info.value)
    assert "reported 1 of 3 runs" in message
    assert str(truncated / "results.json") in message and str(foreign / "results.json") in message
    assert "| imbalanced, CE | 90.00 | 50.00 | 80.00 |" in (tmp_path / "out" / "table.md").read_text()
    # The command: the table of the readable runs, then one line naming the others; status 1.
    assert cli.main(["report", str(good), str(truncated), "--output", str(tmp_path / "o2")]) == 1
