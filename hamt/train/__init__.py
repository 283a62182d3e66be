"""Training (being split into modules; see loop.py)."""

from hamt.train.loop import (  # noqa: F401
    LOG_COLUMNS, EnvFaults, TrainingFailed, WarmupCosine, add_arguments_train, cli_train, make_optimizer, train,
    weights_sha256,
)
