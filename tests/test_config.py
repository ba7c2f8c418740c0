import pathlib

import pytest

from tfimb import config


def test_defaults_are_the_published_protocol():
    cfg = config.resolve({})
    assert cfg.imbalance.minority == [1, 4, 6] and cfg.imbalance.minority_count == 250
    assert cfg.model.name == "resnet18_cifar"
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.momentum) == (25, 128, 0.9)
    assert cfg.train.weight_decay == 5e-4
    assert cfg.train.lr_values == [0.1, 0.01, 0.001] and cfg.train.lr_boundaries == [15, 20]


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: {name: class_balanced_focal, beta: 0.99}\ntrain: {epochs: 3}\n")
    cfg = config.load(path, ["loss.gamma=2", "train.lr_values=[0.2, 0.02, 0.002]",
                             "imbalance.minority_count=100", "data.name=cifar100"])
    assert cfg.loss.name == "class_balanced_focal"
    assert cfg.loss.options == {"beta": 0.99, "gamma": 2}
    assert cfg.train.epochs == 3 and cfg.train.lr_values == [0.2, 0.02, 0.002]
    assert cfg.imbalance.minority == [1, 4, 6] and cfg.imbalance.minority_count == 100
    assert cfg.data.name == "cifar100"
    # The resolved dict reads back to the same config.
    assert config.from_dict(cfg.to_dict()) == cfg
    assert config.resolve(__import__("yaml").safe_load(config.dump(cfg))) == cfg


def test_imbalance_modes():
    long_tail = config.resolve({"imbalance": {"long_tail_factor": 100}})
    assert long_tail.imbalance.long_tail_factor == 100 and long_tail.imbalance.minority is None
    assert config.resolve({}, ["imbalance.long_tail_factor=50"]).imbalance.minority is None
    assert config.resolve({}, ["imbalance=null"]).imbalance is None
    capped = config.resolve({"imbalance": {"majority_count": 1000}})
    assert capped.imbalance.majority_count == 1000 and capped.imbalance.minority == [1, 4, 6]


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(config.ConfigError, match=r"Unknown key `trian`. Valid keys: data, "
                                                 r"distribute, evaluation, imbalance"):
        config.resolve({"trian": {}})
    with pytest.raises(config.ConfigError, match=r"Unknown key `train.epoch`. Valid keys: "
                                                 r"batch_size, checkpoint_every, epochs"):
        config.resolve({}, ["train.epoch=3"])
    with pytest.raises(config.ConfigError, match=r"Unknown key `loss.gama` for loss 'focal'. "
                                                 r"Valid keys: .*gamma"):
        config.resolve({"loss": {"name": "focal", "gama": 2}})


def test_invalid_values():
    cases = [
        ({"train": {"epochs": 0}}, r"`train.epochs`. Expected an integer >= 1"),
        ({"train": {"epochs": "ten"}}, r"`train.epochs`. Expected int"),
        ({"train": {"lr_values": [0.1]}}, r"`train.lr_values`. Expected one more value"),
        ({"train": {"lr_boundaries": [20, 15]}}, r"`train.lr_boundaries`. Expected increasing"),
        ({"mixed_precision": "fp16"}, r"`mixed_precision`. Expected one of \['auto'"),
        ({"distribute": {"strategy": "tpu"}}, r"`distribute.strategy`"),
        ({"data": {"source": "folder"}}, r"`data.dir`"),
        ({"model": {"name": "vgg"}}, r"`model.name`"),
        ({"loss": {"name": "hinge"}}, r"`loss.name`"),
        ({"loss": {"name": "ldam"}}, r"`model.head`. Expected 'cosine'"),
        ({"model": {"shortcut": "option_a"}}, r"`model.shortcut`. Expected one of "
                                              r"\['projection', 'identity'\]"),
        ({"model": {"padding": "valid"}}, r"`model.padding`. Expected one of"),
        ({"model": {"name": "resnet50", "shortcut": "identity"}},
         r"`model.shortcut` / `model.padding`. Expected projection / same for 'resnet50'"),
        ({"imbalance": {"minority": [1], "minority_count": 5, "long_tail_factor": 10}},
         r"either"),
        ({"imbalance": {"long_tail_factor": 0.5}}, r"`imbalance.long_tail_factor`"),
        ({"loss": {"name": "focal", "drw_epoch": 3}}, r"only with the ldam loss"),
        ({"model": {"head": "cosine"}, "loss": {"name": "ldam", "drw_epoch": 30}},
         r"`loss.drw_epoch`. Expected an epoch below"),
    ]
    for raw, match in cases:
        with pytest.raises(config.ConfigError, match=match):
            config.resolve(raw)
    with pytest.raises(config.ConfigError, match=r"`--set`"):
        config.resolve({}, ["train.epochs"])


def test_every_shipped_config_is_valid_and_documented():
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parents[1]
    paths = sorted((root / "configs").rglob("*.yaml")) + sorted(
        (root / "tfimb" / "configs").glob("*.yaml"))
    assert len(paths) >= 35
    for path in paths:
        text = path.read_text()
        for field in ("# Purpose:", "# Command:", "# Expected"):
            assert field in text, (path, field)
        raw = yaml.safe_load(text)
        if path.parent.name == "realnvp" or path.stem.startswith("flow_"):
            config.resolve_flow(raw)  # A `tfimb flow train` config.
            continue
        if "search" in raw:  # A `tfimb tune` config: a training config plus `search`.
            config.resolve_search(raw)
            continue
        config.resolve_variants(raw)


def test_variants_expand_in_the_config_package():
    raw = {"imbalance": {"minority": [1], "minority_count": 5},
           "variants": [{"name": "group"},
                        {"name": "long_tail", "imbalance": {"long_tail_factor": 10}}]}
    jobs = config.resolve_variants(raw, ["train.epochs=2"])
    assert [name for name, _ in jobs] == ["group", "long_tail"]
    group, long_tail = (cfg for _, cfg in jobs)
    assert group.imbalance.minority == [1] and group.train.epochs == 2
    # The imbalance section's own merge rule: a long-tail factor replaces the group keys.
    assert long_tail.imbalance.long_tail_factor == 10 and long_tail.imbalance.minority is None
    assert config.resolve_variants({"loss": {"name": "focal"}})[0][0] is None
    with pytest.raises(config.ConfigError, match=r"`variants\[0\]`.*string `name`"):
        config.resolve_variants({"variants": [{"loss": {"name": "focal"}}]})


def test_engine_has_no_section_special_cases():
    import dataclasses
    import typing

    from tfimb.config import engine

    @dataclasses.dataclass
    class Section:
        EXTRA_KEYS: typing.ClassVar[str] = "rest"
        name: str = "a"
        rest: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)

    built = engine.build(Section, {"name": "b", "x": 1, "y": [2]})
    assert built == Section("b", {"x": 1, "y": [2]})
    source = (pathlib.Path(engine.__file__)).read_text()
    for name in ("LossConfig", "ImbalanceConfig", '"imbalance"', '"loss"'):
        assert name not in source
    # Loss names and arguments come from the registry, with no Keras import.
    assert config.losses_taking("beta", ["ldam", "focal", "class_balanced_focal"],
                                required=True) == ["class_balanced_focal"]
    with pytest.raises(config.ConfigError, match="Unknown key `loss.tau` for loss 'focal'"):
        config.resolve({"loss": {"name": "focal", "tau": 1.0}})
    with pytest.raises(config.ConfigError, match=r"key `loss.drw_beta`"):
        config.resolve({"loss": {"name": "ldam", "drw_epoch": 1, "drw_beta": 1.0},
                        "model": {"head": "cosine"}})


def test_loss_options_key_and_empty_variants():
    with pytest.raises(config.ConfigError, match="Unknown key `loss.options`"):
        config.resolve({"loss": {"name": "focal", "options": {"gamma": 1.0}}})
    for empty in ([], None):
        [(name, cfg)] = config.resolve_variants({"variants": empty, "train": {"epochs": 3}})
        assert name is None and cfg.train.epochs == 3
    # Options every loss takes reach trials and best.yaml (the registry lists them).
    assert config.losses_taking("label_smoothing", ["focal", "ldam"]) == ["focal", "ldam"]


@pytest.mark.parametrize("loss, message", [
    ({"name": "class_balanced_focal", "beta": 1.0}, r"key `loss.beta`.*Received: loss.beta=1.0"),
    ({"name": "focal", "gamma": -1.0}, r"key `loss.gamma`"),
    ({"name": "logit_adjusted", "tau": -2}, r"key `loss.tau`"),
    ({"name": "class_balanced_softmax", "beta": 0.9, "normalization": "mean"},
     r"key `loss.normalization`"),
    ({"name": "focal", "from_logits": "yes"}, r"key `loss.from_logits`.*true or false"),
    ({"name": "class_balanced_softmax"}, r"Missing key `loss.beta`"),
])
def test_loss_argument_values_are_config_errors(loss, message):
    with pytest.raises(config.ConfigError, match=message):
        config.resolve({"loss": loss})
