import json
import os
import pathlib
import re
import subprocess
import sys
import warnings

import pytest

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

    import tfimb.data.imbalance
    import tfimb.data.sampling
    import tfimb.losses
    import tfimb.metrics
    import tfimb.models.heads
    import tfimb.weights

    for module in (tfimb.losses, tfimb.metrics, tfimb.models.heads, tfimb.weights,
                   tfimb.data.sampling, tfimb.data.imbalance):
        result = doctest.testmod(module, extraglobs={"tfimb": tfimb, "np": np, "keras": keras},
                                 optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
        assert result.attempted > 0, module.__name__


def test_cli_turns_onednn_on_before_tensorflow_loads():
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run(["tfimb", "info"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "oneDNN on (TF_ENABLE_ONEDNN_OPTS=1)" in out.stdout, out.stdout


def test_cli_respects_a_users_onednn_choice():
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")
    out = subprocess.run(["tfimb", "info"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)" in out.stdout, out.stdout


def test_late_import_warns_once_where_onednn_would_help(monkeypatch):
    from tfimb import platform_info

    # This process imported TensorFlow after tfimb; simulate the other order on an AVX2 CPU.
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(platform_info, "_warned", False)
    monkeypatch.setattr(platform_info, "onednn_benefits", lambda: True)
    monkeypatch.setattr(platform_info, "onednn_enabled", lambda: False)
    with pytest.warns(RuntimeWarning, match="TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow"):
        platform_info.enable_onednn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        platform_info.enable_onednn()  # Once only.
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setattr(platform_info, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        platform_info.enable_onednn()  # The user's choice: no warning.


def test_register_all_lets_a_fresh_process_load_tfimb_objects(tmp_path):
    """`import tfimb` registers nothing (it imports no Keras); `tfimb.register_all()` does, so
    a `.keras` file with a tfimb loss, group metrics and the cosine head loads in safe mode."""
    path = str(tmp_path / "m.keras")
    save = (
        "import tfimb, keras, numpy as np\n"
        "from tfimb import models\n"
        "inputs = keras.Input((4,))\n"
        "model = keras.Model(inputs, models.CosineClassifier(3, name='logits')(inputs))\n"
        "model.compile(optimizer='sgd', loss=tfimb.ClassBalancedFocal(0.99, [10, 5, 2]),\n"
        "              metrics=tfimb.metrics.group_accuracies([2], 3))\n"
        "model.evaluate(np.ones((2, 4)), np.array([0, 2]), verbose=0)\n"
        f"model.save({path!r})\n")
    load = (
        "import json, tfimb, keras\n"
        "try:\n"
        f"    keras.saving.load_model({path!r}, safe_mode=True)\n"
        "    print('loaded without register_all')\n"
        "except TypeError:\n"
        "    print('not registered')\n"
        "registered = tfimb.register_all()\n"
        f"model = keras.saving.load_model({path!r}, safe_mode=True)\n"
        "print(type(model.loss).__name__, model.loss.beta,\n"
        "      type(model.get_layer('logits')).__name__)\n"
        "print(json.dumps(sorted(registered)))\n")
    _run(sys.executable, "-c", save)
    out = _run(sys.executable, "-c", load).stdout.splitlines()
    assert out[:2] == ["not registered", "ClassBalancedFocal 0.99 CosineClassifier"]
    registered = json.loads(out[2])
    for entry in catalog.LOSSES:
        assert f"tfimb>{entry.class_name}" in registered
    assert {"tfimb>GroupAccuracy", "tfimb>CosineClassifier", "tfimb>RealNVP"} <= set(registered)
