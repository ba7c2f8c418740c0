"""RealNVP density models on `tfp.bijectors` (Dinh, Sohl-Dickstein, Bengio, ICLR 2017).

Imports TensorFlow and TensorFlow Probability.
"""

from tfimb.flows import preprocessing
from tfimb.flows.bijectors import (AffineCoupling, RunningBatchNorm, Squeeze,
                                   channel_mask, checkerboard_mask)
from tfimb.flows.realnvp import CouplingNetwork, RealNVP, WeightNormConv2D

__all__ = ["AffineCoupling", "CouplingNetwork", "RealNVP", "RunningBatchNorm", "Squeeze",
           "WeightNormConv2D", "channel_mask", "checkerboard_mask", "preprocessing"]
