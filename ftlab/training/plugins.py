"""Extra training callbacks named by an environment variable, for tests and benchmarks that inject faults into real
trials: the package ships no fault, only this hook.

``FTLAB_TRAINING_CALLBACKS=module:function`` (several separated by commas) names functions that take the model about to
be trained and return training callbacks; each trial (and ``ftlab train``) installs what they return after its own. The
variable is read once per trial, where the trial starts; unset in normal use, when nothing is imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence

import torch

from ftlab.errors import UserError
from ftlab.training.callbacks import TrainingCallback

ENV_VAR = "FTLAB_TRAINING_CALLBACKS"

CallbackFactory = Callable[[torch.nn.Module], Sequence[TrainingCallback]]


def _load(spec: str) -> CallbackFactory:
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name) if function_name else None
    except (ImportError, AttributeError) as error:
        function, reason = None, f"{type(error).__name__}: {error}"
    else:
        reason = "not a function" if function_name else "no ':function' part"
    if not callable(function):
        raise UserError.single(
            f"cannot load the training callbacks {spec!r} ({reason})",
            where=ENV_VAR,
            value=spec,
            fix="name an importable module and a function in it as module:function (the module's folder on "
            "PYTHONPATH), or unset the variable",
        )
    return function


def extra_callbacks_from_env() -> Callable[[torch.nn.Module], list[TrainingCallback]]:
    """The callbacks that ``FTLAB_TRAINING_CALLBACKS`` adds to training a model, as a function of that model.

    Returns a function giving [] when the variable is unset or empty.

    Raises:
        UserError: a name in the variable cannot be imported or is not a function.
    """
    specs = [spec.strip() for spec in os.environ.get(ENV_VAR, "").split(",") if spec.strip()]
    factories = [_load(spec) for spec in specs]

    def callbacks_for(model: torch.nn.Module) -> list[TrainingCallback]:
        return [callback for factory in factories for callback in factory(model)]

    return callbacks_for
