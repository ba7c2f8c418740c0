"""The chaos benchmark in short (benchmarks/chaos.py): the three-run job interrupted once by
SIGTERM and once by SIGKILL, resumed after each as the one-line message says, ends with every
run's results, history, counts and weights equal to the uninterrupted job's. (SIGINT takes
SIGTERM's path: tests/test_faults.py checks both at the loop.)"""

import importlib.util
import pathlib
import random
import signal

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _chaos():
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "benchmarks" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_sigterm_and_a_sigkill_lose_nothing(tmp_path):
    chaos = _chaos()
    config = tmp_path / "job.yaml"
    config.write_text(chaos.JOB_YAML.format(epochs=4))  # Longer than the 7 s, however fast.
    reference = chaos.run_uninterrupted(tmp_path, config)
    # Signals 4.5-7 s after each start: past TensorFlow's start-up, inside the job (about 20 s
    # of training in all), so each lands at another moment: start-up, training or saving.
    tally = chaos.run_interrupted(tmp_path, config, 2, random.Random(0), (4.5, 7.0),
                                  log=lambda line: None,
                                  signals=[signal.SIGTERM, signal.SIGKILL])
    assert tally["bad_endings"] == []
    assert tally["interruptions"] == 2 and tally["resumes"] == 2
    assert chaos.compare(reference, tmp_path / "interrupted") == []
