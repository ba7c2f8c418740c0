import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Before any test module imports TensorFlow: tfimb turns oneDNN on as it does for users, so
# the suite checks its tolerances with the kernels users get.
import tfimb  # noqa: E402,F401

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def mixed_policy():
    """Run a test under a Keras mixed precision policy, restoring float32 afterwards."""
    import keras

    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")
