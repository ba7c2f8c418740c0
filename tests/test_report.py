"""tfimb.experiments.report: every run of a full table gets a line and a label no other run has."""

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


def test_a_folder_of_runs_reports_every_run_inside_and_names_the_unfinished(tmp_path, capsys):
    import json

    from tfimb import cli

    rows = tmp_path / "rows"
    for name, loss in (("b_ce", "softmax_cross_entropy"), ("a_focal", "focal")):
        (rows / name).mkdir(parents=True)
        (rows / name / "results.json").write_text(json.dumps({
            "accuracy": {"majority": 0.9, "minority": 0.5, "all": 0.8},
            "config": {"loss": {"name": loss}, "imbalance": {}}}))
    (rows / "c_unfinished").mkdir()
    (rows / "c_unfinished" / "config.yaml").write_text("{}\n")
    (rows / "notes").mkdir()  # Neither a run nor a folder of runs: not reported.
    assert report.expand_run_dirs([rows]) == [rows / "a_focal", rows / "b_ce",
                                              rows / "c_unfinished"]
    assert report.expand_run_dirs([rows / "b_ce"]) == [rows / "b_ce"]
    assert report.expand_run_dirs([rows, rows / "b_ce"]) == report.expand_run_dirs([rows])
    assert cli.main(["report", str(rows), "--output", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "| focal | 90.00 |" in captured.out and "| imbalanced, CE | 90.00 |" in captured.out
    assert "reported 2 of 3 runs" in captured.err
    assert "c_unfinished has no results.json" in captured.err
    for path, message in ((tmp_path / "missing", "missing does not exist"),
                          (rows / "b_ce" / "results.json", "results.json is not a folder"),
                          (rows / "notes", "notes is neither a run directory nor a folder of "
                                           "runs")):
        assert cli.main(["report", str(path), "--output", str(tmp_path / "o")]) == 1
        assert message in capsys.readouterr().err


def test_runs_sharing_a_label_are_told_apart_by_their_folders(tmp_path):
    import json

    results = {"accuracy": {"majority": 0.9, "minority": 0.5, "all": 0.8},
               "config": {"loss": {"name": "softmax_cross_entropy"}, "imbalance": {}}}
    runs = []
    for name in ("ce_r100", "ce_r100_seed1", "focal_r100"):
        (tmp_path / name).mkdir()
        if name == "focal_r100":
            results["config"]["loss"] = {"name": "focal", "gamma": 1.0}
        (tmp_path / name / "results.json").write_text(json.dumps(results))
        runs.append(report.load_run(tmp_path / name))
    assert report.labels(runs) == ["imbalanced, CE (ce_r100)", "imbalanced, CE (ce_r100_seed1)",
                                   "focal gamma=1.0"]
    lines = report.table(runs).splitlines()
    assert lines[2].startswith("| imbalanced, CE (ce_r100) | 90.00 |")
    assert lines[3].startswith("| imbalanced, CE (ce_r100_seed1) | 90.00 |")
    # One run keeps its plain label.
    assert report.labels(runs[1:]) == ["imbalanced, CE", "focal gamma=1.0"]
