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


def _finished_run(folder, loss="softmax_cross_entropy", calibration=None, per_class=True):
    """A finished run directory as `tfimb train` leaves it (results.json, history.csv)."""
    import json

    counts = [500, 200, 80, 30, 10]
    results = {"accuracy": {"majority": 0.9, "minority": 0.5, "all": 0.8},
               "config": {"loss": {"name": loss}, "imbalance": {}}}
    if per_class:
        results.update(per_class_accuracy=[0.95, 0.9, 0.7, None, 0.2], counts=counts)
    if calibration is not None:
        results["calibration"] = calibration
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    (folder / "history.csv").write_text("epoch,loss,val_all_accuracy\n0,1.5,0.5\n1,1.0,0.7\n")
    return folder


def _test_logits(seed=0, n=300, classes=5):
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    logits = rng.normal(scale=2.0, size=(n, classes))
    logits[np.arange(n), labels] += 2.0
    return logits, labels


def test_results_calibration_follows_the_losses_probabilities():
    """results.json's `calibration`: softmax of the (LDAM: scaled) logits for softmax losses;
    for sigmoid losses the top logit's sigmoid as confidence and the normalised sigmoids' NLL;
    strict JSON (an empty bin is null, not NaN)."""
    import json

    import numpy as np

    from tfimb import metrics
    from tfimb.experiments import classify

    logits, labels = _test_logits()
    softmax = classify.calibration(logits, labels)
    assert softmax["bins"] == 15 and softmax["probabilities"] == "softmax"
    assert softmax["ece"] == metrics.expected_calibration_error(labels, logits)
    assert softmax["nll"] == metrics.negative_log_likelihood(labels, logits)
    assert sum(softmax["reliability"]["count"]) == len(labels)
    assert None in softmax["reliability"]["accuracy"]  # Confidence never below 1/5: empty bins.
    json.dumps(softmax, allow_nan=False)
    ldam = classify.calibration(logits / 30, labels, "softmax", scale=30.0)
    np.testing.assert_allclose(ldam["ece"], softmax["ece"], rtol=1e-12)
    np.testing.assert_allclose(ldam["nll"], softmax["nll"], rtol=1e-12)

    sigmoid = classify.calibration(logits, labels, "sigmoid")
    assert sigmoid["probabilities"] == "sigmoid"
    top = 1 / (1 + np.exp(-logits.max(-1)))  # The top label's confidence: sigmoid(max z).
    bins = np.minimum((top * 15).astype(int), 14)
    count = np.bincount(bins, minlength=15)
    assert sigmoid["reliability"]["count"] == count.tolist()
    mean_top = [top[bins == b].mean() if count[b] else None for b in range(15)]
    np.testing.assert_allclose(np.array(sigmoid["reliability"]["confidence"], float),
                               np.array(mean_top, float))
    p = 1 / (1 + np.exp(-logits))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(sigmoid["nll"], -np.log(p[np.arange(len(labels)), labels]).mean(),
                               rtol=1e-10)
    json.dumps(sigmoid, allow_nan=False)


def test_report_draws_reliability_and_per_class_accuracy(tmp_path, capsys):
    from tfimb import cli
    from tfimb.experiments import classify

    logits, labels = _test_logits()
    calibrated = _finished_run(tmp_path / "runs" / "ce", calibration=classify.calibration(
        logits, labels))
    _finished_run(tmp_path / "runs" / "sigmoid", "sigmoid_focal",
                  classify.calibration(logits, labels, "sigmoid"))
    older = _finished_run(tmp_path / "runs" / "older", "focal")  # No calibration recorded.
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path / "runs"), "--output", str(out)]) == 0
    shown = capsys.readouterr().out
    for name in ("reliability.png", "per_class_accuracy.png", "training_curves.png",
                 "effective_number.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # The accuracy table keeps its layout; ECE and NLL are a table of their own under it.
    table, extra = (out / "table.md").read_text().split("\n\n")
    assert table.splitlines()[0] == "| training data / loss | majority | minority | all |"
    ece = 100 * classify.calibration(logits, labels)["ece"]
    assert extra.splitlines()[0] == "| training data / loss | ECE (%) | NLL |"
    assert f"| imbalanced, CE | {ece:.2f} |" in extra
    assert "| sigmoid focal |" in extra and "| focal |" not in extra  # Older run: no row.
    assert extra in shown
    # A run alone: its own plots, from its results.json.
    report.plot_run(calibrated)
    for name in ("reliability.png", "per_class_accuracy.png", "training_curves.png"):
        assert (calibrated / "plots" / name).is_file(), name
    report.plot_run(older)
    assert not (older / "plots" / "reliability.png").exists()
    assert (older / "plots" / "per_class_accuracy.png").is_file()


def test_report_tolerates_results_without_calibration_or_per_class_data(tmp_path):
    runs = [_finished_run(tmp_path / "older", per_class=False),
            _finished_run(tmp_path / "focal", "focal")]
    text = report.report(runs, tmp_path / "out")
    assert "ECE" not in text and (tmp_path / "out" / "table.md").read_text() == text + "\n"
    assert not (tmp_path / "out" / "reliability.png").exists()
    assert (tmp_path / "out" / "per_class_accuracy.png").is_file()  # From the run that has it.
    loaded = [report.load_run(run) for run in runs]
    assert report.calibration_table(loaded) == ""
    assert report.plot_reliability(loaded, tmp_path / "r.png") is False
    assert report.plot_per_class_accuracy(loaded[:1], tmp_path / "p.png") is False
    assert not (tmp_path / "r.png").exists() and not (tmp_path / "p.png").exists()


def _with_posthoc(folder, section):
    import json

    results = json.loads((folder / "results.json").read_text())
    results["posthoc"] = section
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    return folder


def test_report_prints_the_posthoc_table_under_the_calibration_table(tmp_path, capsys):
    """Each run that recorded `posthoc` gets its tau, where it was chosen and its test accuracy
    before and after the adjustment; runs without the section (older ones) get no row and
    still load; the accuracy table keeps its layout."""
    import json

    from tfimb import cli
    from tfimb.experiments import classify

    logits, labels = _test_logits()
    counts = [500, 200, 80, 30, 10]
    chosen = classify.posthoc_adjustment(logits, labels, counts, [3, 4], _test_logits(seed=1))
    default = classify.posthoc_adjustment(logits, labels, counts, [3, 4])
    json.dumps(chosen, allow_nan=False)
    assert default["tau"] == 1.0 and default["chosen_on"] is None
    assert chosen["chosen_on"] == "validation"
    runs = tmp_path / "runs"
    _with_posthoc(_finished_run(runs / "ce", calibration=classify.calibration(logits, labels)),
                  chosen)
    _with_posthoc(_finished_run(runs / "focal", "focal"), default)
    _finished_run(runs / "older", "sigmoid_focal")  # No calibration, no posthoc.
    out = tmp_path / "out"
    assert cli.main(["report", str(runs), "--output", str(out)]) == 0
    shown = capsys.readouterr().out
    table, calibration, posthoc = (out / "table.md").read_text().strip().split("\n\n")
    assert table.splitlines()[0] == "| training data / loss | majority | minority | all |"
    assert calibration.splitlines()[0] == "| training data / loss | ECE (%) | NLL |"
    lines = posthoc.splitlines()
    assert lines[0] == ("| training data / loss | tau | chosen on | majority | minority | all "
                        "| adjusted majority | adjusted minority | adjusted all |")
    after = " | ".join(f"{100 * chosen['accuracy'][g]:.2f}"
                       for g in ("majority", "minority", "all"))
    row = f"| imbalanced, CE | {chosen['tau']:g} | validation | 90.00 | 50.00 | 80.00 | {after} |"
    assert row in lines
    assert any(line.startswith("| focal | 1 | default | 90.00 |") for line in lines)
    assert len(lines) == 4 and "sigmoid focal" not in posthoc  # The older run: no row.
    assert posthoc in shown
    older = report.load_run(runs / "older")
    assert report.posthoc_table([older]) == ""
    assert "adjusted" not in report.report([runs / "older"], tmp_path / "o2")
