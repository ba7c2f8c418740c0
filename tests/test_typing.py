"""The public API is typed: annotations on every public function, method and constructor, the
`py.typed` marker shipped, and the lazily resolved names visible to type checkers."""

import ast
import configparser
import inspect
import pathlib
import typing

import pytest

import tfimb
import tfimb.catalog
import tfimb.cli
import tfimb.config
import tfimb.config.classify
import tfimb.config.common
import tfimb.config.engine
import tfimb.config.flow
import tfimb.config.search
import tfimb.data
import tfimb.data.imbalance
import tfimb.data.pipeline
import tfimb.data.sources
import tfimb.data.splits
import tfimb.experiments.classify
import tfimb.experiments.density
import tfimb.experiments.distributed_search
import tfimb.experiments.export
import tfimb.flows.bijectors
import tfimb.flows.preprocessing
import tfimb.flows.realnvp
import tfimb.flows.two_moons
import tfimb.fused_batch_norm
import tfimb.losses
import tfimb.metrics
import tfimb.models
import tfimb.models.heads
import tfimb.models.resnet
import tfimb.experiments.report
import tfimb.experiments.trials
import tfimb.experiments.tune
import tfimb.platform_info
import tfimb.runtime.devices
import tfimb.runtime.launch
import tfimb.config.files
import tfimb.runtime.loop
import tfimb.runtime.preemption
import tfimb.runtime.rundir
import tfimb.runtime.run
import tfimb.weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = (tfimb.losses, tfimb.metrics, tfimb.weights, tfimb.models, tfimb.models.heads,
           tfimb.models.resnet, tfimb.experiments.report, tfimb.experiments.export,
           tfimb.flows.bijectors, tfimb.flows.realnvp, tfimb.flows.preprocessing,
           tfimb.flows.two_moons, tfimb.config, tfimb.config.engine, tfimb.config.common,
           tfimb.config.classify, tfimb.config.flow, tfimb.config.search, tfimb.config.files,
           tfimb.runtime.devices, tfimb.runtime.preemption,
           tfimb.runtime.rundir, tfimb.runtime.loop, tfimb.runtime.launch, tfimb.runtime.run,
           tfimb.data, tfimb.data.splits, tfimb.data.sources, tfimb.data.imbalance,
           tfimb.data.pipeline, tfimb.fused_batch_norm, tfimb.platform_info, tfimb.catalog,
           tfimb.experiments.density, tfimb.experiments.tune, tfimb.experiments.trials,
           tfimb.experiments.distributed_search, tfimb.experiments.classify, tfimb.cli)
# Dunder methods a caller uses directly; every other dunder is Python's business.
CALLED_DUNDERS = ("__init__", "__call__")


def _defined_in_tfimb(obj):
    return getattr(obj, "__module__", "").split(".")[0] == "tfimb"


def _methods(cls):
    """(qualified name, function) of the methods that tfimb defines for `cls`, its tfimb base
    classes included (a public loss inherits `__call__` and `call` from a private base)."""
    for klass in cls.__mro__:
        if not _defined_in_tfimb(klass):
            continue
        for name, value in vars(klass).items():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value) and (not name.startswith("_") or name in CALLED_DUNDERS):
                yield f"{klass.__module__}.{klass.__qualname__}.{name}", value


def _public_callables():
    """Every public function and class of `tfimb.__all__` and of the typed modules, and every
    public method of those classes, as (qualified name, object)."""
    objects = {}
    for name in tfimb.__all__:
        value = getattr(tfimb, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            objects[id(value)] = (f"tfimb.{name}", value)
    for module in MODULES:
        for name, value in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            if _defined_in_tfimb(value):
                objects.setdefault(id(value), (f"{value.__module__}.{name}", value))
    found = []
    for qualname, value in objects.values():
        if inspect.isclass(value):
            found.extend(_methods(value))
        else:
            found.append((qualname, value))
    return sorted(set(found), key=lambda item: item[0])


PUBLIC = _public_callables()


def test_the_public_api_is_found():
    names = {qualname for qualname, _ in PUBLIC}
    for expected in ("tfimb.ClassBalancedFocal", "tfimb.class_counts", "tfimb.focal"):
        value = getattr(tfimb, expected.split(".")[-1])
        assert any(fn is value or fn is getattr(value, "__init__", None) for _, fn in PUBLIC)
    for expected in ("tfimb.losses._ImbalanceLoss.__call__", "tfimb.losses.LDAM.set_beta",
                     "tfimb.losses.get", "tfimb.metrics.GroupAccuracy.update_state",
                     "tfimb.metrics.confusion_matrix", "tfimb.models.heads.CosineClassifier.call",
                     "tfimb.models.resnet.resnet32", "tfimb.experiments.report.report",
                     "tfimb.experiments.export.export", "tfimb.weights.inverse_frequency_weights"):
        assert expected in names, expected
    for expected in ("tfimb.flows.bijectors.AffineCoupling.__init__",
                     "tfimb.flows.bijectors.to_latent",
                     "tfimb.flows.realnvp.RealNVP.sample", "tfimb.flows.preprocessing.dequantize",
                     "tfimb.flows.two_moons.TwoMoonsFlow.log_prob", "tfimb.config.classify.load",
                     "tfimb.config.engine.merge", "tfimb.config.common.DataConfig.concrete",
                     "tfimb.config.flow.resolve_flow", "tfimb.config.search.resolve_search",
                     "tfimb.runtime.devices.make_strategy", "tfimb.runtime.rundir.check_run_dir",
                     "tfimb.runtime.loop.TrainingLoop.fit", "tfimb.runtime.launch.supervise",
                     "tfimb.runtime.run.run", "tfimb.runtime.run.Experiment.build",
                     "tfimb.data.pipeline.pipeline", "tfimb.data.load",
                     "tfimb.data.splits.Split.take", "tfimb.data.sources.list_folder",
                     "tfimb.data.imbalance.subsample", "tfimb.experiments.classify.run_job",
                     "tfimb.experiments.classify.ClassifierExperiment.train_data", "tfimb.fused_batch_norm.fuse_batch_norms",
                     "tfimb.platform_info.describe", "tfimb.catalog.takes",
                     "tfimb.experiments.density.run", "tfimb.experiments.density.load_run",
                     "tfimb.experiments.density.FlowExperiment.results",
                     "tfimb.experiments.tune.run_search",
                     "tfimb.experiments.tune.ImbalanceHyperModel.fit",
                     "tfimb.experiments.trials.trial_config",
                     "tfimb.experiments.trials.write_reports",
                     "tfimb.experiments.distributed_search.run_local",
                     "tfimb.cli.main", "tfimb.cli.build_parser"):
        assert expected in names, expected
    assert len(PUBLIC) > 60


@pytest.mark.parametrize("qualname,function", PUBLIC, ids=[q for q, _ in PUBLIC])
def test_public_callable_is_annotated(qualname, function):
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    if parameters and parameters[0].name in ("self", "cls") and "." in function.__qualname__:
        parameters = parameters[1:]
    missing = [p.name for p in parameters if p.annotation is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not missing, f"{qualname}: parameters without annotations: {missing}"
    if function.__name__ != "__init__":
        assert signature.return_annotation is not inspect.Signature.empty, (
            f"{qualname}: no return annotation")


# The pure-Keras modules, the report, the config, the catalogue, the platform probe and the
# TensorFlow modules below (the density, search and trial experiments included) name only
# objects they import at run time, so their annotations resolve (weights, export, the flow
# bijectors, data, the runtime's devices, rundir and launch, and the command line, which
# imports no TensorFlow, name TensorFlow / Keras / config types for type checkers only).
RESOLVABLE = [(q, f) for q, f in PUBLIC
              if f.__module__ in ("tfimb.losses", "tfimb.losses._base", "tfimb.losses.softmax",
                                  "tfimb.losses.margin", "tfimb.losses.sigmoid",
                                  "tfimb.metrics", "tfimb.models.heads",
                                  "tfimb.models.resnet", "tfimb.experiments.report",
                                  "tfimb.config.engine", "tfimb.config.common",
                                  "tfimb.config.classify", "tfimb.config.flow",
                                  "tfimb.config.search", "tfimb.catalog", "tfimb.platform_info",
                                  "tfimb.flows.realnvp", "tfimb.flows.preprocessing",
                                  "tfimb.flows.two_moons", "tfimb.fused_batch_norm",
                                  "tfimb.runtime.loop", "tfimb.runtime.run",
                                  "tfimb.experiments.classify",
                                  "tfimb.experiments.density", "tfimb.experiments.tune",
                                  "tfimb.experiments.trials",
                                  "tfimb.experiments.distributed_search")]


@pytest.mark.parametrize("qualname,function", RESOLVABLE, ids=[q for q, _ in RESOLVABLE])
def test_annotations_resolve(qualname, function):
    hints = typing.get_type_hints(function)
    assert hints, qualname


def test_annotations_are_not_evaluated_at_import():
    """`from __future__ import annotations` in every typed module: annotations stay strings, so
    importing tfimb costs nothing for them, and `inspect.signature` (read by tfimb.config for
    the loss arguments) still gives the names and defaults."""
    sources = sorted(str(path.relative_to(ROOT / "tfimb"))
                     for path in (ROOT / "tfimb").rglob("*.py")
                     if "def " in path.read_text())  # Every module that defines a function.
    assert "losses/softmax.py" in sources and "experiments/classify.py" in sources
    for source in sources:
        tree = ast.parse((ROOT / "tfimb" / source).read_text())
        futures = [node for node in tree.body if isinstance(node, ast.ImportFrom)
                   and node.module == "__future__"]
        assert any(alias.name == "annotations" for node in futures for alias in node.names), (
            source)
    params = inspect.signature(tfimb.ClassBalancedFocal).parameters
    assert params["gamma"].default == 1.0 and params["beta"].annotation == "float"


def test_py_typed_marker_is_shipped():
    assert (ROOT / "tfimb" / "py.typed").is_file()
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    shipped = [item.strip() for item in setup["options.package_data"]["tfimb"].split(",")]
    assert "py.typed" in shipped and "configs/*.yaml" in shipped


def test_version_in_one_place():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["version"].strip() == "attr: tfimb.__version__"
    assert isinstance(tfimb.__version__, str) and tfimb.__version__.count(".") == 2
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert f"## [{tfimb.__version__}]" in changelog


def test_type_checkers_see_the_lazy_names():
    """The `if TYPE_CHECKING:` imports of tfimb/__init__.py name exactly the lazily resolved
    public names and submodules (a loss added to the catalogue must be added there too)."""
    tree = ast.parse((ROOT / "tfimb" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    imported = set()
    for node in block.body:
        if isinstance(node, ast.ImportFrom) and node.module != "typing":
            imported |= {alias.asname or alias.name for alias in node.names}
    runtime_submodules = {"catalog", "platform_info"}  # Imported by tfimb itself.
    expected = (set(tfimb._LAZY_NAMES) | set(tfimb._SUBMODULES)) - runtime_submodules
    assert imported == expected
    for name in imported:
        module = tfimb._LAZY_NAMES.get(name)
        if module is not None:
            source = next(node.module for node in block.body if isinstance(node, ast.ImportFrom)
                          and name in {a.name for a in node.names})
            assert source == module, name
