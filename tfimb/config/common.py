"""Config sections shared by the experiments: data and distribution."""

from __future__ import annotations

import dataclasses
import os
import re
import typing

from tfimb.config import engine
from tfimb.config.engine import ConfigError

DATA_DIR_VARIABLE = "TFIMB_DATA_DIR"
# Class-aware samplers (tfimb.data.sampling), declared here for the config's check.
SAMPLINGS = ("instance", "class_balanced", "square_root", "progressive")
SERVICE_ADDRESS = re.compile(r"^grpc://[^:/\s]+:\d{1,5}$")


def bad_service_address(address: object) -> str | None:
    """The error for a `data.service` value that is not grpc://HOST:PORT, else None (the config
    check and the data-service command share it)."""
    if SERVICE_ADDRESS.match(str(address)):
        return None
    return ("Invalid value for key `data.service`. Expected grpc://HOST:PORT (a tf.data service "
            f"dispatcher). Received: data.service={address!r}")


@dataclasses.dataclass
class DataConfig:
    # tfds | folder | digits (scikit-learn's, ships offline) | auto: an image folder from
    # `data.dir` or $TFIMB_DATA_DIR when either is set, else tfds (resolved when the config is,
    # so a run's config.yaml records what it read).
    source: str = "tfds"
    name: str = "cifar10"            # tfds data set name
    dir: typing.Optional[str] = None  # folder root (`root/<split>/<class>/*.jpg`) or tfds data_dir
    validation_per_class: int = 0    # carved from training data, before the imbalance
    # training: carved before the imbalance | left_out: from the images the imbalance leaves
    # out, so that the training set stays the one without validation (tfimb.data.imbalance)
    validation_from: str = "training"
    seed: int = 0
    train_split: str = "train"
    test_split: str = "test"
    image_size: typing.Optional[int] = None  # the model's square input size (resizes images)
    augment: bool = True             # pad-4 random crop + flip (large images: resized crop + flip)
    # auto | true | false: stream images from disk instead of holding them in memory (auto:
    # when the decoded training split would exceed 2 GiB or its images vary in size).
    stream: typing.Any = "auto"
    # grpc://HOST:PORT of a tf.data service dispatcher that builds the training batches (image
    # folders; the same batches as without it). Where the input runs, so --resume ignores it.
    service: typing.Optional[str] = None
    # instance | class_balanced | square_root | progressive: how often an epoch draws each
    # class (tfimb.data.sampling; classifiers); instance draws every example once.
    sampling: str = "instance"

    def concrete(self) -> DataConfig:
        """`auto` resolved to `folder` (data.dir, else $TFIMB_DATA_DIR) or `tfds`."""
        resolved = self
        if self.source == "auto":
            folder = self.dir or os.environ.get(DATA_DIR_VARIABLE) or None
            resolved = dataclasses.replace(self, source="folder" if folder else "tfds",
                                           dir=folder)
        resolved.check_service_source()
        return resolved

    def check_service_source(self) -> None:
        """data.service needs an image folder (`auto` passes until it is resolved)."""
        if self.service is not None and self.source not in ("folder", "auto"):
            raise ConfigError("Invalid value for key `data.service`. Expected it with "
                              "data.source 'folder' only (the service builds batches from "
                              "examples read by position). Received: data.service="
                              f"{self.service!r} with data.source={self.source!r}")

    def validate(self) -> None:
        engine.one_of("data.source", self.source, ("tfds", "folder", "digits", "auto"))
        if self.source == "folder" and not self.dir:
            raise ConfigError("Invalid value for key `data.dir`. Expected the folder root "
                              "when data.source is 'folder'. Received: data.dir=None")
        engine.at_least("data.validation_per_class", self.validation_per_class, 0)
        engine.one_of("data.sampling", self.sampling, SAMPLINGS)
        engine.one_of("data.validation_from", self.validation_from, ("training", "left_out"))
        if self.stream not in ("auto", True, False) or isinstance(self.stream, int) and \
                not isinstance(self.stream, bool):
            raise ConfigError("Invalid value for key `data.stream`. Expected auto, true or "
                              f"false. Received: data.stream={self.stream!r}")
        if self.image_size is not None:
            engine.at_least("data.image_size", self.image_size, 1)
        if self.service is not None:
            problem = bad_service_address(self.service)
            if problem:
                raise ConfigError(problem)
            self.check_service_source()
            if self.stream is False:
                raise ConfigError("Invalid value for key `data.stream`. Expected auto or true "
                                  "with data.service (its workers read the files). Received: "
                                  "data.stream=False")


STRATEGIES = ("default", "mirrored", "multi_worker")


@dataclasses.dataclass
class DistributeConfig:
    strategy: str = "default"        # default | mirrored | multi_worker (hosts from TF_CONFIG)
    num_cpu_devices: int = 2         # logical CPU replicas for `mirrored` when there is no GPU
    # Batch-norm statistics over the global batch (all replicas) rather than each replica's
    # share, at one all-reduce per batch-norm layer and step; one device then trains the
    # weights N workers train (both compute the moments as E[x^2] - E[x]^2). Classifiers only.
    sync_batch_norm: bool = False

    def validate(self) -> None:
        engine.one_of("distribute.strategy", self.strategy, STRATEGIES)
        engine.at_least("distribute.num_cpu_devices", self.num_cpu_devices, 1)
        if not isinstance(self.sync_batch_norm, bool):
            raise ConfigError("Invalid value for key `distribute.sync_batch_norm`. Expected true "
                              f"or false. Received: {self.sync_batch_norm!r}")
