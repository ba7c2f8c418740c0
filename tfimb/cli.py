"""The `tfimb` command line. Subcommands import TensorFlow only when they need it."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import sys

import numpy as np

import tfimb
from tfimb import catalog, errors
from tfimb.runtime import rundir

# For type checkers only: at run time the command line imports TensorFlow, Keras, the config
# package and the experiments only when a subcommand needs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator, Sequence

    from tfimb._checks import PathLike
    from tfimb.config import FlowConfig
    from tfimb.flows.realnvp import RealNVP

PACKAGED_CONFIGS = pathlib.Path(__file__).parent / "configs"


def _losses(args: argparse.Namespace) -> int:
    del args
    print(catalog.format_table())
    return 0


def _info(args: argparse.Namespace) -> int:
    """The machine as tfimb sees it: versions, CPU kernels, devices, the precision `auto` picks."""
    del args
    import keras
    import tensorflow as tf

    from tfimb.runtime import devices

    print(f"tfimb {tfimb.__version__}, TensorFlow {tf.__version__}, Keras {keras.__version__} "
          f"({keras.backend.backend()} backend)")
    print(tfimb.platform_info.describe())
    gpus = tf.config.list_physical_devices("GPU")
    print(f"GPUs: {len(gpus)}; mixed_precision auto -> {devices.resolve_precision('auto')}")
    return 0


def resolve_config_path(name: str) -> pathlib.Path:
    """A YAML path, or the name of a config shipped with tfimb (`default`)."""
    path = pathlib.Path(name)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    shipped = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise errors.UsageError(f"config not found: {name!r} is neither a file nor one of the "
                            f"configs shipped with tfimb ({', '.join(shipped)}).")


def _load_yaml_config(name: str) -> tuple[pathlib.Path, Any]:
    """The config file's path and YAML (`config.files.read`: UTF-8 or UTF-16 with a BOM, each
    key once per mapping); an unreadable file is one line, not a traceback."""
    import yaml

    from tfimb.config import files

    path = resolve_config_path(name)
    try:
        return path, files.read(path) or {}
    except yaml.YAMLError as error:  # Syntax, or a tag the safe loader refuses (!!python/...).
        problem = " ".join(str(error).split())
        raise errors.UsageError(f"{path}: not a YAML config the safe loader reads ({problem}); "
                                "configs hold plain YAML values only.") from None


def _train(args: argparse.Namespace) -> int:
    from tfimb import config as config_lib

    path, raw = _load_yaml_config(args.config)
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / path.stem)
    try:  # A config with variants is several runs: one sub-directory per variant.
        jobs = [(cfg, workdir / name if name else workdir)
                for name, cfg in config_lib.resolve_variants(raw, args.set)]
    except config_lib.ConfigError as error:
        raise config_lib.ConfigError(f"{path}: {error}") from None
    if not _non_chief_worker():  # One writer per directory: refused before TensorFlow loads.
        for _, run_dir in jobs:
            rundir.RunLock(run_dir).check_free()
    if args.local_workers is not None:
        return _launch_local_workers(args, ["train"], workdir)
    _load_tensorflow(args)
    from tfimb.experiments import classify, report

    with _local_data_service(args.local_data_workers) as address:
        if address:  # Every job's training batches from this process's own service.
            jobs = [(_with_data_service(cfg, address, path), run_dir) for cfg, run_dir in jobs]
        finished, ran = classify.run_job(jobs, args.resume,
                                         announce=lambda line: print(line, flush=True))
    if len(jobs) > 1 and not ran:
        print(f"All {len(jobs)} runs of {path} in {workdir} had finished; their table:")
    print(report.table(finished))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from tfimb import config as config_lib

    path, raw = _load_yaml_config(args.config)
    try:
        cfg, search = config_lib.resolve_search(raw, args.set)
    except config_lib.ConfigError as error:
        raise config_lib.ConfigError(f"{path}: {error}") from None
    from tfimb.experiments import distributed_search, trials

    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / "search" / path.stem)
    if not args.worker:
        rundir.RunLock(workdir).check_free()
    if args.local_workers is not None:
        best = distributed_search.run_local(args, workdir, cfg, search)
    else:
        distributed_search.set_environment(args.chief, args.worker, args.worker_id)
        _load_tensorflow(args)
        from tfimb.experiments import tune

        best = tune.run_search(cfg, search, workdir)
        if tune.is_worker():
            return 0
    if best is None:
        raise trials.SearchError(f"no trial completed in {workdir}; see "
                                 f"{workdir / 'trials.csv'}.")
    print((workdir / "results.md").read_text())
    print(f"best config: {workdir / 'best.yaml'}")
    if args.final:
        _load_tensorflow(args)
        from tfimb.experiments import report, tune

        tune.final(workdir)
        print(report.table([report.load_run(workdir / "final")]))
    return 0


def _flow_train(args: argparse.Namespace) -> int:
    from tfimb import config as config_lib

    path, raw = _load_yaml_config(args.config)
    try:
        cfg = config_lib.resolve_flow(raw, args.set)
    except config_lib.ConfigError as error:
        raise config_lib.ConfigError(f"{path}: {error}") from None
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / "flows" / path.stem)
    if not _non_chief_worker():
        rundir.RunLock(workdir).check_free()
    if args.local_workers is not None:
        return _launch_local_workers(args, ["flow", "train"], workdir)
    _load_tensorflow(args)
    from tfimb.experiments import density

    results = density.run(cfg, workdir, resume=args.resume)
    bpd = results["bits_per_dim"]
    per_class = (f", per class {workdir / 'samples_per_class.png'}"
                 if cfg.model.class_conditional else "")
    print(f"{workdir}: bits/dim train {bpd['train']:.4f}, {results['evaluation_split']} "
          f"{bpd['test']:.4f} after {results['epochs_completed']} epochs; samples: "
          f"{workdir / 'samples.png'}{per_class}")
    return 0


def _non_chief_worker() -> bool:
    """Whether TF_CONFIG makes this process a worker other than the chief: it shares the
    chief's run directory and never takes its lock (a dead worker restarts alone)."""
    import json

    try:
        spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task, cluster = spec.get("task") or {}, spec.get("cluster") or {}
        if task.get("type") == "chief" or not task:
            return False
        return "chief" in cluster or int(task.get("index") or 0) > 0
    except (ValueError, TypeError, AttributeError):
        return False  # A malformed TF_CONFIG: the strategy says so later.


@contextlib.contextmanager
def _local_data_service(workers: int | None) -> Iterator[str | None]:
    """`--local-data-workers N`: a tf.data service dispatcher and N workers in this process
    for the run (their address), stopped after it; None without the option."""
    if workers is None:
        yield None
        return
    if workers < 1:
        raise errors.UsageError("Invalid value for argument `--local-data-workers`. Expected "
                                f"N >= 1. Received: --local-data-workers={workers}")
    from tfimb.data import service

    local = service.Service(workers=workers)
    print(f"tf.data service: a dispatcher and {workers} worker(s) at {local.address}",
          flush=True)
    try:
        yield local.address
    finally:
        local.stop()


def _with_data_service(cfg: Any, address: str, path: pathlib.Path) -> Any:
    """`cfg` with `data.service: address`, checked like a config that names it."""
    from tfimb import config as config_lib

    data = dataclasses.replace(cfg.data, service=address)
    try:
        data.validate()
    except config_lib.ConfigError as error:
        raise config_lib.ConfigError(f"{path} with --local-data-workers: {error}") from None
    return dataclasses.replace(cfg, data=data)


def _data_service(args: argparse.Namespace) -> int:
    """`tfimb data-service`: a tf.data service dispatcher and/or workers, serving until
    stopped."""
    from tfimb.data import service

    if args.dispatcher and not args.workers:
        raise errors.UsageError("Invalid value for argument `--workers`. Expected at least 1 "
                                "with --dispatcher (this host only runs workers). Received: "
                                f"--workers={args.workers}")
    if args.dispatcher:
        service.host_port(f"grpc://{args.dispatcher}")  # A clear error for a malformed one.
    try:
        server = service.Service(args.port, args.workers, args.dispatcher, args.host,
                                 args.worker_port)
    except Exception as error:  # A port in use, an unreachable dispatcher...
        raise errors.UsageError(f"tfimb data-service: cannot start ({error}).") from None
    what = (f"a dispatcher at {server.address}" if server.dispatcher is not None
            else f"workers for the dispatcher at {server.address}")
    print(f"tf.data service: {what}, {args.workers} worker(s) here; training configs point "
          f"at it with `data.service: {server.address}`. Ctrl-C stops.", flush=True)
    # Ctrl-C and SIGTERM stop it, even when started with SIGINT ignored (a background job,
    # a test runner's worker: Python then installs no KeyboardInterrupt handler).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        # Exit at once: a worker's graceful stop waits for the jobs it served to be released
        # by the dispatcher (minutes); the dispatcher reassigns a stopped worker's work anyway.
        print("tf.data service: stopped.", flush=True)
        sys.stderr.flush()
        os._exit(0)
    return 0


def _launch_local_workers(args: argparse.Namespace, command: list[str],
                          workdir: pathlib.Path) -> int:
    """`--local-workers N`: the same command as N multi-worker processes on this machine."""
    from tfimb.runtime import launch

    argv = [sys.executable, "-m", "tfimb", *command, str(args.config), "--workdir", str(workdir)]
    for text in args.set:
        argv += ["--set", text]
    argv += ["--set", "distribute.strategy=multi_worker"]
    if getattr(args, "local_data_workers", None):
        argv += ["--local-data-workers", str(args.local_data_workers)]
    if args.resume:
        argv.append("--resume")
    launch.run_local_workers(argv, args.local_workers, workdir / "workers")
    return 0


def _load_flow(run_dir: PathLike) -> tuple[FlowConfig, RealNVP]:
    from tfimb.experiments import density

    return density.load_run(run_dir)


def _flow_evaluate(args: argparse.Namespace) -> int:
    from tfimb.experiments import density

    cfg, model = _load_flow(args.run_dir)
    images, labels, names = density.test_data(cfg)
    per_example = density.bits_per_dim_of(model, images, cfg.train.batch_size, labels=labels)
    bpd = density.mean_bits_per_dim(per_example, cfg.train.batch_size)
    print(f"test bits/dim: {bpd:.4f} ({len(images)} images, uniform dequantisation, "
          "inference mode)")
    if model.num_classes is not None:  # Of p(x | y): the same pass, averaged per class.
        from tfimb.flows import conditional

        per_class = conditional.per_class_mean(per_example, labels, model.num_classes)
        counts = np.bincount(labels, minlength=model.num_classes)
        print("per-class test bits/dim (class: bits/dim, images):")
        for c, (value, count) in enumerate(zip(per_class, counts)):
            name = f" {names[c]}" if c < len(names) and names[c] != str(c) else ""
            print(f"  {c}{name}: {value:.4f} ({count})")
    return 0


def _flow_sample(args: argparse.Namespace) -> int:
    from tfimb.experiments import density

    _, model = _load_flow(args.run_dir)
    # A conditional run: --label K samples class K, else the samples cycle through the classes.
    labels = density.sample_labels(model, args.n) if args.label is None else args.label
    try:
        images = model.sample(args.n, args.temperature, seed=args.seed, labels=labels).numpy()
    except ValueError as error:  # n, temperature or label out of range: a usage error.
        raise errors.UsageError(str(error)) from None
    output = args.output or pathlib.Path(args.run_dir) / f"samples_T{args.temperature}.png"
    print(f"{args.n} samples written to {density.write_grid(images, output)}")
    return 0


def _flow_interpolate(args: argparse.Namespace) -> int:
    from tfimb.experiments import density

    cfg, model = _load_flow(args.run_dir)
    images = density.test_images(cfg)
    index = np.random.default_rng(args.seed).choice(len(images), 4, replace=False)
    grid = density.interpolate(model, images[index], args.steps)
    output = args.output or pathlib.Path(args.run_dir) / "interpolation.png"
    print(f"interpolation written to {density.write_grid(grid, output, args.steps)} "
          f"(test images {index.tolist()} at the corners)")
    return 0


def _flow_two_moons(args: argparse.Namespace) -> int:
    from tfimb.flows import two_moons

    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    model, data = two_moons.train(epochs=args.epochs, seed=args.seed)
    nll = -float(np.mean(model.log_prob(data).numpy()))
    path = two_moons.plot_figure(model, data, output / "two_moons.png", seed=args.seed)
    print(f"two moons: mean negative log-likelihood {nll:.3f} nats on the training points; "
          f"figure: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """`tfimb evaluate RUN_DIR`: a finished classifier run's model on its test split again."""
    import json

    from tfimb.experiments import classify

    recorded_path = pathlib.Path(args.run_dir) / rundir.RESULTS
    results = classify.evaluate_run(args.run_dir, args.set)
    accuracy, calibration = results["accuracy"], results["calibration"]
    groups = ", ".join(f"{k} {100 * v:.2f}" for k, v in accuracy.items() if v is not None)
    print(f"{args.run_dir}: test accuracy % {groups}; ECE {calibration['ece']:.4f}, NLL "
          f"{calibration['nll']:.4f}")
    posthoc = results["posthoc"]
    adjusted = ", ".join(f"{k} {100 * v:.2f}" for k, v in posthoc["accuracy"].items()
                         if v is not None)
    print(f"post-hoc logit adjustment, tau {posthoc['tau']:g} (chosen on "
          f"{posthoc['chosen_on'] or 'nothing: no validation split, tau = 1'}): {adjusted}")
    if recorded_path.is_file():
        recorded = json.loads(recorded_path.read_text())["accuracy"]["all"]
        print(f"recorded in {recorded_path}: all {100 * recorded:.2f}")
    return 0


def _decouple(args: argparse.Namespace) -> int:
    """`tfimb decouple RUN_DIR --method M`: the second stage on a finished run's model."""
    from tfimb import config as config_lib

    cfg = config_lib.stage_config(args.run_dir, args.method, args.set)
    source, workdir = pathlib.Path(args.run_dir), _decouple_workdir(args)
    rundir.RunLock(workdir).check_free()
    _load_tensorflow(args)
    from tfimb.experiments import decouple, report

    results = decouple.run(cfg, workdir, resume=args.resume)
    stage = results["stage"]
    missing = [c for c, n in enumerate(stage["validation_counts"]) if n == 0]
    if missing:  # The imbalance kept these classes whole: nothing was left out to validate on.
        print(f"note: the validation split holds no image of classes {missing} (the imbalance "
              "kept them whole); its accuracies cover the other classes only")
    where = stage.get("chosen_on") or "nothing: no validation split"
    chosen = f"; tau {stage['tau']} (chosen on {where})" if "tau" in stage else ""
    print(report.table([{"dir": workdir, "results": results}]))
    print(f"{workdir}: {args.method} on {source}{chosen}")
    return 0


def _decouple_workdir(args: argparse.Namespace) -> pathlib.Path:
    """A second stage's run directory: --workdir, else RUN_DIR_<method> beside RUN_DIR."""
    source = pathlib.Path(args.run_dir)
    return pathlib.Path(args.workdir or source.parent / f"{source.name}_{args.method}")


def _export(args: argparse.Namespace) -> int:
    import json

    from tfimb.experiments import export

    path = export.export(args.run_dir, name=args.name, version=args.version,
                         output_dir=args.output_dir, overwrite=args.overwrite,
                         logit_adjustment=args.logit_adjustment)
    print(f"SavedModel written to {path} ({export.run_kind(args.run_dir)}); signatures: "
          "saved_model_cli show --all --dir " + str(path))
    record = path / "assets" / "logit_adjustment.json"
    if args.logit_adjustment is not None and record.exists():
        tau = json.loads(record.read_text())["tau"]
        print(f"its serving signatures apply post-hoc logit adjustment, z - {tau:g} * log(pi) "
              f"(tau and pi: signature logit_adjustment and {record})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tfimb.experiments import report

    try:
        print(report.report(args.run_dirs, args.output))
    except FileNotFoundError as error:  # A run that has not finished.
        raise errors.TfimbError(str(error)) from None
    print(f"\nplots and table.md written to {args.output}")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser, default_dir: str) -> None:
    """--workdir, --set and --resume of the training commands."""
    parser.add_argument("--workdir", help=f"run directory (default: {default_dir})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=10 (YAML value)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--local-workers", type=int, metavar="N",
                        help="train as N multi-worker processes on 127.0.0.1 "
                             "(distribute.strategy=multi_worker); workers 1.. log to "
                             "WORKDIR/workers; all stop when one fails")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfimb",
        description="Class-imbalance losses and RealNVP density models for TensorFlow/Keras.")
    parser.add_argument("--version", action="version", version=f"tfimb {tfimb.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an anticipated error, and TensorFlow's "
                             "start-up log lines (also TFIMB_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    losses = commands.add_parser("losses", help="list the losses with their formulas")
    losses.set_defaults(handler=_losses)

    info = commands.add_parser(
        "info", help="versions, CPU (model, flags), oneDNN state, GPUs, the precision auto picks")
    info.set_defaults(handler=_info)

    train = commands.add_parser(
        "train", help="train and evaluate a classifier from a YAML config",
        description="Train, evaluate on the test split and write a run directory "
                    "(config.yaml, counts.json, history.csv, logs/, checkpoints/, model.keras, "
                    "plots/, results.json).")
    train.add_argument("config", help="YAML config file, or 'default' (offline digits demo)")
    _add_run_arguments(train, "runs/<config name>")
    train.add_argument("--local-data-workers", type=int, metavar="N",
                       help="build the training batches on a tf.data service of N workers "
                            "started in this process (data.service; image folders)")
    train.set_defaults(handler=_train)

    data_service = commands.add_parser(
        "data-service", help="run a tf.data service dispatcher and/or workers for data.service",
        description="Start a tf.data service dispatcher (and workers) on this host, or, with "
                    "--dispatcher, workers for another host's dispatcher; serve until stopped. "
                    "Training configs name the dispatcher as data.service: grpc://HOST:PORT. "
                    "The image folder must be at the same path on every host.")
    data_service.add_argument("--port", type=int, default=5050,
                              help="the dispatcher's port (default 5050)")
    data_service.add_argument("--workers", type=int, default=1, metavar="N",
                              help="service workers to start on this host (default 1)")
    data_service.add_argument("--dispatcher", metavar="HOST:PORT",
                              help="start only workers, for the dispatcher at HOST:PORT")
    data_service.add_argument("--host", default=socket.gethostname(),
                              help="the name other hosts reach this one by (default: "
                                   "the host name)")
    data_service.add_argument("--worker-port", type=int, default=0, metavar="PORT",
                              help="the first worker's port (then PORT+1, ...; default: any)")
    data_service.set_defaults(handler=_data_service)

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

    flow = commands.add_parser("flow", help="RealNVP density models: train, evaluate, sample")
    flow_commands = flow.add_subparsers(dest="flow_command", metavar="COMMAND")
    flow_train = flow_commands.add_parser(
        "train", help="train RealNVP from a YAML config",
        description="Train RealNVP, evaluate bits/dim and write a run directory (config.yaml, "
                    "history.csv, logs/, checkpoints/, model.weights.h5, samples.png, "
                    "results.json).")
    flow_train.add_argument("config", help="YAML config, or 'flow_default' (offline digits)")
    _add_run_arguments(flow_train, "runs/flows/<config name>")
    flow_train.set_defaults(handler=_flow_train)
    evaluate = flow_commands.add_parser(
        "evaluate", help="test bits/dim of a finished run (per class for a conditional one)")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.set_defaults(handler=_flow_evaluate)
    sample = flow_commands.add_parser("sample", help="a PNG grid of samples")
    sample.add_argument("run_dir", metavar="RUN_DIR")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--temperature", type=float, default=1.0,
                        help="latent standard deviation (default 1.0)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--label", type=int, metavar="CLASS",
                        help="class-conditional runs: sample this class (default: cycle "
                             "through the classes)")
    sample.add_argument("--output", help="PNG path (default RUN_DIR/samples_T<temperature>.png)")
    sample.set_defaults(handler=_flow_sample)
    interpolate = flow_commands.add_parser(
        "interpolate", help="a PNG grid of the paper's eq. 19 latent manifold")
    interpolate.add_argument("run_dir", metavar="RUN_DIR")
    interpolate.add_argument("--steps", type=int, default=8, help="grid side (default 8)")
    interpolate.add_argument("--seed", type=int, default=0, help="picks the 4 test images")
    interpolate.add_argument("--output", help="PNG path (default RUN_DIR/interpolation.png)")
    interpolate.set_defaults(handler=_flow_interpolate)

    moons = flow_commands.add_parser(
        "two-moons", help="a 2-D RealNVP on two moons, drawn like the paper's Figure 1")
    moons.add_argument("--output", default="runs/flows/two_moons", help="folder for the PNG")
    moons.add_argument("--epochs", type=int, default=60)
    moons.add_argument("--seed", type=int, default=0)
    moons.set_defaults(handler=_flow_two_moons)

    evaluate_run = commands.add_parser(
        "evaluate", help="a finished classifier run's model on its test split again",
        description="Load RUN_DIR's config.yaml and model.keras and evaluate the model on the "
                    "run's test split: group accuracy, ECE and NLL, beside the recorded "
                    "accuracy. --set data.dir=PATH points at the data where it lives now.")
    evaluate_run.add_argument("run_dir", metavar="RUN_DIR")
    evaluate_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                              help="override a key of the run's config (e.g. data.dir)")
    evaluate_run.set_defaults(handler=_evaluate)

    decouple = commands.add_parser(
        "decouple", help="the decoupled second stage (cRT, LWS, tau-norm, NCM) on a finished run",
        description="Kang et al.'s second stage on RUN_DIR's model, written as a new run "
                    "directory with the results schema of `tfimb train`: crt retrains a fresh "
                    "classifier and lws per-class scales (backbone frozen, class-balanced "
                    "sampling, 30 epochs), tau_norm divides each class's weights by their "
                    "norm^tau, ncm classifies by the nearest class mean of normalised features. "
                    "Tau and epochs are judged on a validation split (the run's own, else 100 "
                    "images per class the imbalance left out), never on the test split.")
    decouple.add_argument("run_dir", metavar="RUN_DIR")
    decouple.add_argument("--method", required=True, metavar="METHOD",
                          help="crt | lws | tau_norm | ncm")
    decouple.add_argument("--workdir", help="run directory (default: RUN_DIR_<method>)")
    decouple.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a key of the stage's config, e.g. --set "
                               "train.epochs=10 or --set stage.taus=[0,0.5,1]")
    decouple.add_argument("--resume", action="store_true",
                          help="continue an interrupted cRT / LWS stage from its checkpoint")
    decouple.set_defaults(handler=_decouple)

    export = commands.add_parser(
        "export", help="a self-contained SavedModel for TF Serving from a finished run",
        description="Write saved_models/NAME/VERSION/ (a temporary directory renamed into "
                    "place) from a classifier or flow run directory.")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--name", help="model name (default: the run directory's name)")
    export.add_argument("--version", type=int, help="version (default: the next free integer)")
    export.add_argument("--output-dir", default="saved_models",
                        help="model base path (default: saved_models)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.add_argument("--logit-adjustment", nargs="?", const="auto", metavar="TAU|auto",
                        help="classifier runs: serve post-hoc adjusted logits z - tau * log(pi) "
                             "(pi: training priors); `auto` or no value: the tau results.json "
                             "recorded (chosen on the validation split; 1 without one)")
    export.set_defaults(handler=_export)

    report = commands.add_parser("report", help="table and plots from finished runs")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory, or a folder of them (each run directly inside)")
    report.add_argument("--output", default="report", help="folder for the plots (default: report)")
    report.set_defaults(handler=_report)
    return parser


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null (C++ libraries write there directly), then restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _load_tensorflow_quietly() -> None:
    """Import TensorFlow and look for devices with its C++ start-up lines (CUDA stubs, cuInit
    on a CPU machine, CPU feature notes) silenced: they look like errors and are not. Python
    errors still surface (after stderr is restored). Skipped with --debug, or when the user set
    TF_CPP_MIN_LOG_LEVEL."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with _stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()


def _load_tensorflow(args: argparse.Namespace) -> None:
    """For the commands that load TensorFlow themselves, once their config has been checked."""
    if not args.debug:
        _load_tensorflow_quietly()


# Commands that never import TensorFlow (loading it would only add start-up time), or load it
# themselves once their config has been checked: a mistyped config or key is then refused in
# a fraction of a second, and the `--local-workers` launcher of `train`, `flow train` and `tune`,
# which only starts and watches its workers, holds no TensorFlow runtime of its own beside
# theirs (`tune --final` loads it after the search, to train the winner).
_TENSORFLOW_LATER = (_losses, _report, _train, _flow_train, _tune)


def _workdir(args: argparse.Namespace) -> pathlib.Path | None:
    """The directory a training or search command writes (its default if not given)."""
    if args.handler is _decouple:
        return _decouple_workdir(args)
    defaults = {_train: "runs", _flow_train: "runs/flows", _tune: "runs/search"}
    if args.handler not in defaults:
        return None
    stem = pathlib.Path(args.config).stem
    return pathlib.Path(args.workdir or pathlib.Path(defaults[args.handler]) / stem)


def _continue_hint(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """What continues an interrupted command: the same command (with --resume for a training
    run whose directory holds an unfinished run), or a note that nothing was started."""
    import shlex

    command = "tfimb " + shlex.join(argv)
    workdir = _workdir(args)
    if args.handler not in (_train, _flow_train, _decouple) or workdir is None:
        return f"Continue with: {command}"
    configs = [workdir / "config.yaml", *workdir.glob("*/config.yaml")]
    unfinished = [c for c in configs if c.is_file() and not (c.parent / rundir.RESULTS).exists()]
    if not unfinished:
        return f"No unfinished run in {workdir}; run {command} to start."
    resume = "" if args.resume or getattr(args, "local_workers", None) else " --resume"
    return f"Continue with: {command}{resume}"


def _interrupted(interrupt: KeyboardInterrupt, args: argparse.Namespace,
                 argv: Sequence[str]) -> int:
    """Ctrl-C or SIGTERM, in training (a checkpoint saved) or at any other moment: one line."""
    from tfimb.runtime import preemption

    if isinstance(interrupt, preemption.Preempted):
        what = str(interrupt)
    else:
        name = getattr(interrupt, "signum", None)
        what = ("stopped by " + (preemption.NAMES.get(name, "SIGINT (Ctrl-C)") if name
                                 else "SIGINT (Ctrl-C)") +
                "; every file written so far is complete (the last checkpoint stays)")
    print(f"tfimb: {what}. {_continue_hint(args, argv)}", file=sys.stderr, flush=True)
    return preemption.exit_status(interrupt)


def _write_failure(error: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a write that failed on a full disk or a missing permission, else None:
    the file when the error names it, else the run (or export) directory."""
    cause = rundir.write_failure(error)
    if cause is None:
        return None
    where = getattr(error, "filename", None) or _workdir(args) or getattr(args, "output_dir",
                                                                          None)
    where = f" {where}" if where else ""
    if not getattr(error, "filename", None) and where:
        where = f" in{where}"
    # A missing permission may be a file read (a config, the data), not only a write.
    verb = "access" if cause.startswith(("Permission", "Operation not")) else "write"
    return (f"cannot {verb}{where}: {cause}. Free space (or fix the permission) and run the "
            "command again; an interrupted run continues with --resume from its last complete "
            "checkpoint.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    debug = args.debug = args.debug or os.environ.get("TFIMB_DEBUG", "") not in ("", "0")
    from tfimb.runtime import preemption

    with preemption.installed():
        try:
            if not debug and args.handler not in _TENSORFLOW_LATER:
                _load_tensorflow_quietly()
            return args.handler(args)
        except (errors.TfimbError, FloatingPointError) as error:
            # Anticipated: one line naming what and where. Unanticipated errors keep their
            # traceback.
            if debug:
                raise
            print(f"tfimb: {error}", file=sys.stderr)
            return getattr(error, "exit_code", 1)
        except KeyboardInterrupt as interrupt:
            if debug:
                raise
            return _interrupted(interrupt, args, argv)
        except Exception as error:  # A full disk or a missing permission, wherever it struck.
            line = None if debug else _write_failure(error, args)
            if line is None:
                raise
            print(f"tfimb: {line}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
