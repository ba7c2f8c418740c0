import pathlib
import re
import subprocess
import sys

import tfimb
from tfimb import catalog, cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT, **kwargs)


def test_import_is_cheap():
    code = ("import sys, tfimb; tfimb.effective_number([1, 2], 0.9); "
            "tfimb.class_counts([0, 1], 2); "
            "heavy = [m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules]; "
            "print(heavy)")
    assert _run(sys.executable, "-c", code).stdout.strip() == "[]"


def test_lazy_public_names():
    for name in tfimb.__all__:
        assert getattr(tfimb, name) is not None
    assert "ClassBalancedFocal" in dir(tfimb)
    try:
        tfimb.NoSuchLoss
    except AttributeError as error:
        assert "NoSuchLoss" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_cli_version_and_losses(capsys):
    assert _run("tfimb", "--version").stdout.strip() == f"tfimb {tfimb.__version__}"
    out = _run(sys.executable, "-m", "tfimb", "losses").stdout
    for entry in catalog.LOSSES:
        assert entry.name in out and entry.class_name in out and entry.formula in out
    assert cli.main(["losses"]) == 0
    assert "weighted_mean" in capsys.readouterr().out
    assert cli.main([]) == 2


def test_readme_documents_every_loss_and_the_commands():
    readme = (ROOT / "README.md").read_text()
    for entry in catalog.LOSSES:
        assert f"`{entry.class_name}" in readme, entry.class_name
    assert 'pip install -e ".[dev]"' in readme
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = re.search(r"```(?:bash|sh)?\n(pytest[^\n]*)\n```", readme).group(1)
    assert test_command in ci
    assert 'pip install -e ".[dev]"' in ci


def test_docstring_examples_run():
    import doctest

    import keras
    import numpy as np

    import tfimb.losses
    import tfimb.metrics
    import tfimb.models.heads
    import tfimb.weights

    for module in (tfimb.losses, tfimb.metrics, tfimb.models.heads, tfimb.weights):
        result = doctest.testmod(module, extraglobs={"tfimb": tfimb, "np": np, "keras": keras},
                                 optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
        assert result.attempted > 0, module.__name__


def test_readme_multi_label_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    code = next(b for b in blocks if "multi_label=True" in b)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    auc = namespace["history"].history["auc"]
    assert len(auc) == 2 and all(0.0 <= v <= 1.0 for v in auc)
