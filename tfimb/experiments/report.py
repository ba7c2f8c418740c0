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
    return f"{data}, {label}" if name == "softmax_cross_entropy" else label


def labels(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each run's row label (`describe`, or the folder's name for a run without results); runs
    that would share a label, such as two seeds of one config, get their folder's name after it
    so that no two rows or curves read alike."""
    names = [describe(run["results"]["config"]) if "results" in run else run["dir"].name
             for run in runs]
    return [f"{name} ({run['dir'].name})" if names.count(name) > 1 and "results" in run
            else name for name, run in zip(names, runs)]


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


def plot_run(run_dir: PathLike) -> None:
    """A run's own training curves, written to RUN_DIR/plots/training_curves.png."""
    run_dir = pathlib.Path(run_dir)
    (run_dir / "plots").mkdir(exist_ok=True)
    plot_curves([{"dir": run_dir, "history": load_history(run_dir)}],
                run_dir / "plots" / "training_curves.png")


def report(run_dirs: Iterable[PathLike], output: PathLike) -> str:
    """Print the table for `run_dirs` (folders of runs expand to their runs); write table.md
    and the plots under `output`.

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
    text = table(runs)
    (output / "table.md").write_text(text + "\n")
    plot_curves(runs, output / "training_curves.png")
    plot_effective_number(output / "effective_number.png")
    if problems:
        print(text)
        raise ReportError(f"reported {len(runs)} of {len(runs) + len(problems)} runs (table.md "
                          f"and plots in {output}); " + " ".join(problems))
    return text
