"""`tfimb report`: the published table and plots from finished run directories."""

from __future__ import annotations

import csv
import json
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tfimb import catalog
from tfimb.errors import TfimbError
from tfimb import weights as weights_lib
from tfimb._checks import PathLike

LOSS_TITLES: dict[str, str] = {entry.name: entry.title for entry in catalog.LOSSES}


class ReportError(TfimbError, ValueError):
    """A run directory whose results cannot be reported (unfinished, unreadable, foreign)."""


def load_history(run_dir: PathLike) -> dict[str, np.ndarray]:
    """history.csv as a dict of float columns (empty when absent)."""
    path = pathlib.Path(run_dir) / "history.csv"
    if not path.exists():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {key: np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])
            for key in (rows[0] if rows else {})}


def _is_run(folder: pathlib.Path) -> bool:
    return (folder / "results.json").exists() or (folder / "config.yaml").exists()


def expand_run_dirs(paths: Iterable[PathLike]) -> list[pathlib.Path]:
    """The run directories named by `paths`, each once: a folder that is not a run (it holds
    neither results.json nor config.yaml) stands for the runs directly inside it, in name
    order, so `tfimb report benchmarks/results/cifar10_lt` reports every row kept there."""
    runs: dict[pathlib.Path, None] = {}
    for path in map(pathlib.Path, paths):
        inside = (sorted(child for child in path.iterdir() if child.is_dir() and _is_run(child))
                  if path.is_dir() and not _is_run(path) else [])
        runs.update(dict.fromkeys(inside or [path]))
    return list(runs)


def load_run(run_dir: PathLike) -> dict[str, Any]:
    run_dir = pathlib.Path(run_dir)
    path = run_dir / "results.json"
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir} does not exist: expected a run directory (or a "
                                "folder of them).")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder: expected a run directory (or a "
                                "folder of them).")
    if not _is_run(run_dir):
        raise FileNotFoundError(f"{run_dir} is neither a run directory nor a folder of runs (no "
                                "results.json or config.yaml in it or directly inside it).")
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no results.json: the run has not finished "
                                "(resume it with `tfimb train CONFIG --workdir DIR --resume`).")
    try:
        with open(path) as f:
            results = json.load(f)
        results["accuracy"], results["config"]["loss"]["name"]
    except (ValueError, KeyError, TypeError) as error:  # Truncated, or not a tfimb run's.
        raise ReportError(f"{path} is not a readable tfimb results.json ({type(error).__name__}:"
                          f" {error}); it was left out.") from None
    return {"dir": run_dir, "results": results, "history": load_history(run_dir)}


STAGE_TITLES = {"crt": "cRT", "lws": "LWS", "tau_norm": "tau-norm", "ncm": "NCM"}


def describe(config: Mapping[str, Any]) -> str:
    """Row label in the published layout: training data, loss and its hyper-parameters."""
    loss = dict(config["loss"])
    name: str = loss.pop("name")
    params = [f"{key}={loss[key]}" for key in ("beta", "gamma", "tau", "max_margin")
              if key in loss]
    if loss.get("drw_epoch") is not None:
        params.append(f"DRW from epoch {loss['drw_epoch'] + 1}")
    label = " ".join([LOSS_TITLES.get(name, name)] + params)
    data = "balanced data" if config.get("imbalance") is None else "imbalanced"
    stage = config.get("stage")
    if stage:  # A decoupled second stage: named by its method and the run it started from.
        return f"{STAGE_TITLES.get(stage['method'], stage['method'])} on " \
               f"{pathlib.Path(stage['from_run']).name}"
    return f"{data}, {label}" if name == "softmax_cross_entropy" else label


def labels(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each run's row label (`describe`, or the folder's name for a run without results or
    their config); runs that would share a label, such as two seeds of one config, get their
    folder's name after it so that no two rows or curves read alike."""
    described = ["config" in run.get("results", {}) for run in runs]
    names = [describe(run["results"]["config"]) if known else run["dir"].name
             for run, known in zip(runs, described)]
    return [f"{name} ({run['dir'].name})" if names.count(name) > 1 and known
            else name for name, run, known in zip(names, runs, described)]


def table(runs: Sequence[Mapping[str, Any]]) -> str:
    """The three-group accuracy table (percent) as Markdown lines: the final epoch's test
    accuracies and, when any run recorded it, the best evaluated epoch's all-class accuracy
    (the statistic CIFAR-10-LT reference code reports) with that epoch."""
    with_best = any(run["results"].get("best_evaluated_epoch") for run in runs)
    header = "| training data / loss | majority | minority | all |"
    rule = "| --- | ---: | ---: | ---: |"
    if with_best:
        header += " best all (epoch) |"
        rule += " ---: |"
    lines = [header, rule]
    for run, label in zip(runs, labels(runs)):
        acc = run["results"]["accuracy"]
        cells = ["" if acc.get(k) is None else f"{100 * acc[k]:.2f}"
                 for k in ("majority", "minority", "all")]
        if with_best:
            best = run["results"].get("best_evaluated_epoch")
            cells.append(f"{100 * best['accuracy']['all']:.2f} ({best['epoch']})" if best else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """The test split's expected calibration error (percent) and negative log-likelihood of
    the runs that recorded them (results.json's `calibration`), as Markdown lines; "" when
    none did. A table of its own under the accuracy table, whose layout stays the published
    one."""
    rows = [(label, run["results"]["calibration"]) for run, label in zip(runs, labels(runs))
            if run["results"].get("calibration")]
    if not rows:
        return ""
    lines = ["| training data / loss | ECE (%) | NLL |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {100 * c['ece']:.2f} | {c['nll']:.3f} |" for label, c in rows]
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def posthoc_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Post-hoc logit adjustment (results.json's `posthoc`, Menon et al. 2021) of the runs
    that recorded it, as Markdown lines; "" when none did: each run's tau, the split it was
    chosen on (`default`: no validation split, Menon et al.'s tau = 1) and the test split's
    majority / minority / all accuracy (percent) of `argmax(z)` and of the adjusted
    `argmax(z - tau log pi)`. A table of its own under the calibration table, so that the
    accuracy table keeps the published layout."""
    rows = [(label, run["results"]) for run, label in zip(runs, labels(runs))
            if run["results"].get("posthoc")]
    if not rows:
        return ""
    groups = ("majority", "minority", "all")
    lines = ["| training data / loss | tau | chosen on | majority | minority | all "
             "| adjusted majority | adjusted minority | adjusted all |",
             "| --- | ---: | --- |" + " ---: |" * 6]
    for label, results in rows:
        posthoc = results["posthoc"]
        before, after = results["accuracy"], posthoc.get("accuracy") or {}
        cells = [f"{posthoc['tau']:g}", posthoc.get("chosen_on") or "default"]
        cells += [_percent(before.get(g)) for g in groups]
        cells += [_percent(after.get(g)) for g in groups]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_styles(count: int) -> list[dict[str, Any]]:
    """A distinct (colour, dash) pair per run: ten colours, then the next dash pattern, so
    runs beyond the tenth do not reuse a line another run already has."""
    colors = _pyplot().get_cmap("tab10").colors
    dashes = ("-", "--", ":", "-.")
    return [dict(color=colors[i % len(colors)], linestyle=dashes[(i // len(colors)) % len(dashes)])
            for i in range(count)]


def plot_curves(runs: Sequence[Mapping[str, Any]], path: PathLike) -> None:
    """Training loss and evaluation all/minority accuracy per epoch, a line per run.

    The loss axis is logarithmic because losses differ in scale (LDAM's scaled logits give it
    several times the cross-entropy), and the legend sits below the panels so that a full
    table's 17 runs do not cover the curves.
    """
    plt = _pyplot()
    runs = [run for run in runs if run["history"]]
    legend_columns = 3
    legend_height = 0.22 * -(-len(runs) // legend_columns)  # Inches: a row per 3 runs.
    height = 4.2 + legend_height
    fig, axes = plt.subplots(1, 3, figsize=(15, height))
    for run, style, label in zip(runs, _line_styles(len(runs)), labels(runs)):
        history = run["history"]
        epochs = history["epoch"] + 1
        axes[0].plot(epochs, history["loss"], label=label, **style)
        for ax, key in ((axes[1], "val_all_accuracy"), (axes[2], "val_minority_accuracy")):
            if key in history:  # Only evaluated epochs (evaluation.interval may skip some).
                shown = np.isfinite(history[key])
                ax.plot(epochs[shown], 100 * history[key][shown], label=label, **style)
    for ax, title in zip(axes, ("training loss", "all-class accuracy (%)",
                                "minority accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_yscale("log")
    handles, legend_labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, legend_labels, loc="lower center", ncol=legend_columns, fontsize=8,
                   frameon=False)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_effective_number(path: PathLike, betas: Sequence[float] = (0.9, 0.99, 0.999, 0.9999),
                          n_max: int = 10000) -> None:
    """E_n = (1 - beta^n) / (1 - beta) against n, with E_n = n for reference."""
    plt = _pyplot()
    n = np.unique(np.round(np.logspace(0, np.log10(n_max), 400)))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for beta in betas:
        ax.plot(n, weights_lib.effective_number(n, beta), label=f"beta = {beta}")
    ax.plot(n, n, "k--", lw=0.8, label="E_n = n (beta -> 1)")
    ax.set(xscale="log", yscale="log", xlabel="number of samples n",
           ylabel="effective number E_n", title="Effective number of samples")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _floats(values: Iterable[Any]) -> np.ndarray:
    """A JSON list of numbers as floats, NaN for null (an empty bin, a class without test
    examples)."""
    return np.array([np.nan if v is None else v for v in values], np.float64)


def _save_with_legend(fig: Any, ax: Any, path: PathLike, legend_height: float,
                      height: float) -> None:
    """The legend below the panel (a full table's 17 runs would cover the points), saved."""
    handles, legend_labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, legend_labels, loc="lower center", ncol=2, fontsize=8,
                   frameon=False)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_reliability(runs: Sequence[Mapping[str, Any]], path: PathLike) -> bool:
    """Reliability diagram of the test split: per confidence bin, the accuracy of the top
    label against the bin (a step per run; the diagonal is perfect calibration), and below,
    the share of test examples per bin; each run's ECE in the legend.

    A curve under the diagonal is over-confidence. Runs without `calibration` in their
    results.json (older runs) are left out; returns False, drawing nothing, when none has it.
    """
    shown = [(run, style, label) for run, style, label
             in zip(runs, _line_styles(len(runs)), labels(runs))
             if run.get("results", {}).get("calibration")]
    if not shown:
        return False
    plt = _pyplot()
    legend_height = 0.22 * -(-len(shown) // 2)
    height = 6.5 + legend_height
    fig, (ax, share) = plt.subplots(2, 1, figsize=(6.5, height), sharex=True,
                                    gridspec_kw={"height_ratios": (3, 1)})
    ax.plot([0, 1], [0, 100], color="0.5", lw=0.8, linestyle="--")
    for run, style, label in shown:
        calibration = run["results"]["calibration"]
        diagram = calibration["reliability"]
        edges = np.linspace(0.0, 1.0, int(calibration["bins"]) + 1)
        count = _floats(diagram["count"])
        ax.stairs(100 * _floats(diagram["accuracy"]), edges, baseline=None,  # Empty: a gap.
                  label=f"{label} (ECE {100 * calibration['ece']:.2f}%)", **style)
        share.stairs(100 * count / max(count.sum(), 1), edges, **style)
    ax.set(xlim=(0, 1), ylim=(0, 100), ylabel="accuracy (%)",
           title="Reliability of the top label (test split)")
    share.set(xlabel="confidence (max probability)", ylabel="examples (%)")
    for axis in (ax, share):
        axis.grid(alpha=0.3)
    _save_with_legend(fig, ax, path, legend_height, height)
    return True


def plot_per_class_accuracy(runs: Sequence[Mapping[str, Any]], path: PathLike) -> bool:
    """Test accuracy of every class against its training images (log axis), a marker per
    class and a colour per run: how accuracy follows the tail of the imbalance.

    Runs whose results.json lacks `per_class_accuracy` or `counts` are left out; returns
    False, drawing nothing, when none has them."""
    shown = [(run["results"], style, label) for run, style, label
             in zip(runs, _line_styles(len(runs)), labels(runs))
             if run.get("results", {}).get("per_class_accuracy") and
             len(run["results"].get("counts") or ()) == len(run["results"]["per_class_accuracy"])]
    if not shown:
        return False
    plt = _pyplot()
    legend_height = 0.22 * -(-len(shown) // 2)
    height = 4.5 + legend_height
    fig, ax = plt.subplots(figsize=(6.5, height))
    markers = "os^vD<>pPX"
    for i, (results, style, label) in enumerate(shown):
        ax.scatter(_floats(results["counts"]), 100 * _floats(results["per_class_accuracy"]),
                   color=style["color"], marker=markers[i % len(markers)], s=18, alpha=0.8,
                   label=label)
    ax.set(xscale="log", ylim=(-2, 102), xlabel="training images of the class",
           ylabel="test accuracy (%)", title="Per-class accuracy against training count")
    ax.grid(alpha=0.3, which="both")
    _save_with_legend(fig, ax, path, legend_height, height)
    return True


def plot_run(run_dir: PathLike, results: Mapping[str, Any] | None = None) -> None:
    """A run's own training curves, written to RUN_DIR/plots/training_curves.png, and, from
    `results` (default: RUN_DIR/results.json when it exists), its reliability diagram and
    per-class accuracy (`reliability.png`, `per_class_accuracy.png`)."""
    run_dir = pathlib.Path(run_dir)
    (run_dir / "plots").mkdir(exist_ok=True)
    plot_curves([{"dir": run_dir, "history": load_history(run_dir)}],
                run_dir / "plots" / "training_curves.png")
    if results is None and (run_dir / "results.json").exists():
        try:
            results = load_run(run_dir)["results"]
        except ReportError:
            results = None
    if results is not None:
        run = [{"dir": run_dir, "results": results}]
        plot_reliability(run, run_dir / "plots" / "reliability.png")
        plot_per_class_accuracy(run, run_dir / "plots" / "per_class_accuracy.png")


def report(run_dirs: Iterable[PathLike], output: PathLike) -> str:
    """Print the table for `run_dirs` (folders of runs expand to their runs), and under it
    the calibration table when a run recorded calibration and the post-hoc logit adjustment
    table when a run recorded `posthoc`; write them to table.md and the plots under
    `output`: training curves, effective number, and where the runs recorded their data, the
    reliability diagram and per-class accuracy against training count.

    Runs whose results.json cannot be read are left out; the others are reported, and then a
    `ReportError` names every file left out."""
    runs, problems = [], []
    for run_dir in expand_run_dirs(run_dirs):
        try:
            runs.append(load_run(run_dir))
        except (ReportError, FileNotFoundError) as error:
            problems.append(str(error))
    if not runs:
        raise ReportError(" ".join(problems))
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(filter(None, (table(runs), calibration_table(runs),
                                      posthoc_table(runs))))
    (output / "table.md").write_text(text + "\n")
    plot_curves(runs, output / "training_curves.png")
    plot_effective_number(output / "effective_number.png")
    plot_reliability(runs, output / "reliability.png")
    plot_per_class_accuracy(runs, output / "per_class_accuracy.png")
    if problems:
        print(text)
        raise ReportError(f"reported {len(runs)} of {len(runs) + len(problems)} runs (table.md "
                          f"and plots in {output}); " + " ".join(problems))
    return text
