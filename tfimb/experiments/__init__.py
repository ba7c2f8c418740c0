"""The experiments: what each `tfimb` command runs, over the runtime's one run skeleton.

`classify` (`tfimb train`: the imbalanced-classification experiment), `density` (`tfimb flow
train`, evaluate, sample, interpolate: RealNVP), `tune` and `distributed_search` (`tfimb tune`:
keras-tuner over the classifier's loop), `export` (`tfimb export`: SavedModels for TF Serving)
and `report` (`tfimb report`: the published table and plots). They build on the layers below
(`tfimb.runtime`, `tfimb.config`, `tfimb.data`, `tfimb.flows`, `tfimb.losses`, `tfimb.models`)
and are imported by `tfimb.cli` only when a command needs them; nothing below imports them.
"""
