"""RealNVP density models on `tfp.bijectors` (Dinh, Sohl-Dickstein, Bengio, ICLR 2017).

Imports TensorFlow and TensorFlow Probability.
"""

from tfimb.flows import conditional, preprocessing
from tfimb.flows.bijectors import (AffineCoupling, FactorOut, RunningBatchNorm, Squeeze,
                                   Unsqueeze, channel_mask, checkerboard_mask, to_data,
                                   to_latent)
from tfimb.flows.conditional import ClassPrior
from tfimb.flows.realnvp import CouplingNetwork, RealNVP, WeightNormConv2D

__all__ = ["AffineCoupling", "ClassPrior", "CouplingNetwork", "FactorOut", "RealNVP",
           "RunningBatchNorm", "Squeeze", "Unsqueeze", "WeightNormConv2D", "channel_mask",
           "checkerboard_mask", "conditional", "preprocessing", "to_data", "to_latent"]
