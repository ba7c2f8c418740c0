"""The `tfimb` command line. Subcommands import TensorFlow only when they need it."""

import argparse
import pathlib
import sys

import tfimb
from tfimb import catalog

PACKAGED_CONFIGS = pathlib.Path(__file__).parent / "configs"


def _losses(args):
    del args
    print(catalog.format_table())
    return 0


def resolve_config_path(name):
    """A YAML path, or the name of a config shipped with tfimb (`default`)."""
    path = pathlib.Path(name)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    shipped = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise SystemExit(f"tfimb: config not found: {name!r} is neither a file nor one of the "
                     f"configs shipped with tfimb ({', '.join(shipped)}).")


def _load_yaml_config(name):
    import yaml

    path = resolve_config_path(name)
    with open(path) as f:
        return path, yaml.safe_load(f) or {}


def _train(args):
    from tfimb import config as config_lib
    from tfimb import report, train

    path, raw = _load_yaml_config(args.config)
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / path.stem)
    variants = raw.pop("variants", None) if isinstance(raw, dict) else None
    jobs = []
    try:
        if variants:  # One config, several runs: one sub-directory per variant.
            for variant in variants:
                variant = dict(variant)
                name = variant.pop("name")
                cfg = config_lib.resolve(config_lib.merge(raw, variant), args.set)
                jobs.append((cfg, workdir / name))
        else:
            jobs.append((config_lib.resolve(raw, args.set), workdir))
    except config_lib.ConfigError as error:
        raise SystemExit(f"tfimb: {path}: {error}") from None
    for cfg, run_dir in jobs:
        print(f"== {run_dir}", flush=True)
        try:
            train.run(cfg, run_dir, resume=args.resume)
        except train.RunDirError as error:
            raise SystemExit(f"tfimb: {error}") from None
    print(report.table([report.load_run(run_dir) for _, run_dir in jobs]))
    return 0


def _tune(args):
    from tfimb import config as config_lib
    from tfimb import distributed_search, report, train, tune

    path, raw = _load_yaml_config(args.config)
    try:
        cfg, search = config_lib.resolve_search(raw, args.set)
    except config_lib.ConfigError as error:
        raise SystemExit(f"tfimb: {path}: {error}") from None
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / "search" / path.stem)
    try:
        if args.local_workers is not None:
            best = distributed_search.run_local(args, workdir, cfg, search)
        else:
            distributed_search.set_environment(args.chief, args.worker, args.worker_id)
            best = tune.run_search(cfg, search, workdir)
            if tune.is_worker():
                return 0
    except (config_lib.ConfigError, tune.SearchError, distributed_search.LaunchError) as error:
        raise SystemExit(f"tfimb: {error}") from None
    if best is None:
        raise SystemExit(f"tfimb: no trial completed in {workdir}; see {workdir / 'trials.csv'}.")
    print((workdir / "results.md").read_text())
    print(f"best config: {workdir / 'best.yaml'}")
    if args.final:
        try:
            tune.final(workdir)
        except (tune.SearchError, train.RunDirError) as error:
            raise SystemExit(f"tfimb: {error}") from None
        print(report.table([report.load_run(workdir / "final")]))
    return 0


def _report(args):
    from tfimb import report

    try:
        print(report.report(args.run_dirs, args.output))
    except FileNotFoundError as error:
        raise SystemExit(f"tfimb: {error}") from None
    print(f"\nplots and table.md written to {args.output}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tfimb",
        description="Class-imbalance losses and RealNVP density models for TensorFlow/Keras.")
    parser.add_argument("--version", action="version", version=f"tfimb {tfimb.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    losses = commands.add_parser("losses", help="list the losses with their formulas")
    losses.set_defaults(handler=_losses)

    train = commands.add_parser(
        "train", help="train and evaluate a classifier from a YAML config",
        description="Train, evaluate on the test split and write a run directory "
                    "(config.yaml, counts.json, history.csv, logs/, checkpoints/, model.keras, "
                    "plots/, results.json).")
    train.add_argument("config", help="YAML config file, or 'default' (offline digits demo)")
    train.add_argument("--workdir", help="run directory (default: runs/<config name>)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=10 (YAML value)")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its last completed epoch")
    train.set_defaults(handler=_train)

    tune = commands.add_parser(
        "tune", help="search loss, beta and gamma with keras-tuner by validation accuracy",
        description="Search the `search.space` of a training config with keras-tuner, scoring "
                    "trials on a validation split carved from the training data; writes "
                    "trials.csv, results.md and best.yaml; the same command resumes.")
    tune.add_argument("config", help="YAML search config (a training config plus `search:`)")
    tune.add_argument("--workdir", help="search directory (default: runs/search/<config name>)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. --set search.max_trials=4")
    tune.add_argument("--final", action="store_true",
                      help="then retrain best.yaml on the full training data, evaluate on test")
    where = tune.add_mutually_exclusive_group()
    where.add_argument("--chief", metavar="HOST:PORT",
                       help="serve the search's oracle on HOST:PORT for --worker processes")
    where.add_argument("--worker", metavar="HOST:PORT", help="run trials for the chief at HOST:PORT")
    where.add_argument("--local-workers", type=int, metavar="N",
                       help="start a chief and N workers on 127.0.0.1 and wait for them")
    tune.add_argument("--worker-id", type=int, metavar="N", help="this worker's number (0, 1, ...)")
    tune.set_defaults(handler=_tune)

    report = commands.add_parser("report", help="table and plots from finished runs")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--output", default="report", help="folder for the plots (default: report)")
    report.set_defaults(handler=_report)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
