"""Typed experiment configs, read from YAML (safe loader) and overridden by `--set key=value`.

One small schema package: `engine` (dicts -> typed dataclass sections, merging, `--set`
overrides, `variants`; no section special cases), the sections shared by the experiments
(`common`: data, distribution), and one module per experiment: `classify` (`tfimb train`),
`flow` (`tfimb flow train`), `search` (`tfimb tune`). Unknown keys are errors that list the
valid ones; `--set` takes a dotted key and a YAML value: `--set train.epochs=10 --set
loss.beta=0.999 --set imbalance=null`. Loss names and arguments come from the loss registry
(`tfimb.catalog`); values are checked with the library's own checks (`tfimb._checks`).

    data:      {source: tfds | folder | digits | auto, name: cifar10, dir: PATH, validation_per_class: 0, seed: 0,
               sampling: instance | class_balanced | square_root | progressive}
    imbalance: {minority: [1, 4, 6], minority_count: 250, majority_count: null} | {long_tail_factor: 100} | null
    model:     {name: resnet18_cifar | resnet8 | resnet20 | resnet32, head: dense | cosine}
    loss:      {name: class_balanced_focal, beta: 0.99, gamma: 1.0, ...}   # counts filled in
    train:     {epochs: 25, batch_size: 128, momentum: 0.9, weight_decay: 5.0e-4, ...}
    mixed_precision: auto | float32 | mixed_bfloat16 | mixed_float16
    distribute: {strategy: default | mirrored | multi_worker, num_cpu_devices: 2, sync_batch_norm: false}
    evaluation: {minority: null, interval: 1, every_epoch_from: null}
"""

from tfimb.config.engine import (ConfigError, build, dump, expand_variants, merge,
                                 parse_override)
from tfimb.config.common import (DATA_DIR_VARIABLE, STRATEGIES, DataConfig,
                                 DistributeConfig)
from tfimb.config.classify import (PRECISIONS, EvaluationConfig, ExperimentConfig,
                                   ImbalanceConfig, LossConfig, ModelConfig, StageConfig,
                                   TrainConfig, from_dict, load, resolve, resolve_variants,
                                   stage_config)
from tfimb.config.flow import (FlowConfig, FlowModelConfig, FlowTrainConfig, dump_flow,
                               resolve_flow)
from tfimb.config.search import (SEARCH_ALGORITHMS, SearchConfig, SearchSpaceConfig,
                                 beta_losses, gamma_losses, losses_taking, resolve_search)

__all__ = [
    "ConfigError", "DATA_DIR_VARIABLE", "DataConfig", "DistributeConfig", "EvaluationConfig",
    "ExperimentConfig", "FlowConfig", "FlowModelConfig", "FlowTrainConfig", "ImbalanceConfig",
    "LossConfig", "ModelConfig", "PRECISIONS", "SEARCH_ALGORITHMS", "STRATEGIES",
    "SearchConfig", "SearchSpaceConfig", "StageConfig", "TrainConfig", "beta_losses", "build", "dump",
    "dump_flow", "expand_variants", "from_dict", "gamma_losses", "load", "losses_taking",
    "merge", "parse_override", "resolve", "resolve_flow", "resolve_search", "resolve_variants",
    "stage_config",
]
