"""Running the `tfimb` command line in a subprocess, as a user would."""

import os
import subprocess
import sys


def run_tfimb(*args, cwd):
    """`python -m tfimb ARGS` in `cwd`; the CompletedProcess with text output."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tfimb", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)
