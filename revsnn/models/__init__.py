"""The model zoo: every family of the seed papers, in named configurations.

Each family module defines ``CONFIGS: dict[str, dict]`` and ``build(config: dict) -> nn.Module``. A config
is plain JSON data (it is stored in checkpoints, so that export needs nothing else):

- ``family``: the family name; ``input_shape``: ``[C, H, W]`` of one time step; ``num_classes``;
- the family's own hyper-parameters (widths, depths, neuron settings), passed to its model class;
- ``train``: default training settings for ``revsnn train`` (``epochs``, ``lr``, ``time_steps``,
  ``batch_size``, ``encoding``).

Every model takes a time-first input ``[T, B, C, H, W]``, resets its neurons at the start of ``forward``,
returns logits ``[B, num_classes]``, and exposes ``model.config``. Its reversible parts are
``ReversibleModule`` instances, so ``revsnn.reversible.plain_twin(model)`` gives the plain-autograd twin.

A model of the user's own is named ``MODULE:FUNCTION`` (``revsnn train --model mymodels:build``): an
importable function called with the keywords ``input_shape=(C, H, W)`` and ``num_classes=N`` that returns
the ``nn.Module``. Its config is family ``"user"`` with ``builder = "MODULE:FUNCTION"``, ``input_shape``,
``num_classes`` and ``train`` (strings, ints and lists only, so the checkpoint still loads with
``weights_only=True``). Rebuilding it (export, verify, info, bench infer) imports MODULE, which runs its
code; MODULE is looked up as ``python -m`` does, the current directory first. revsnn resets the model's
neurons before every forward (a forward pre-hook), so the user's ``forward`` need not.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import copy
import importlib
import os
import sys
from typing import Any, Callable

from torch import nn

# family -> module that defines CONFIGS and build()
FAMILY_MODULES = {
    "revsresnet": "revsnn.models.resnet",
    "pararevsnn": "revsnn.models.resnet",
    "revsformer": "revsnn.models.former",
    "trevsnn": "revsnn.models.trev",
    "revnode": "revsnn.models.revnode",
    "scnn": "revsnn.models.scnn",
}

__all__ = ["FAMILY_MODULES", "USER_FAMILY", "all_configs", "get_config", "build_model", "is_builder_spec",
           "builder_config", "resolve_builder", "UnknownModelError", "ModelBuilderError"]

# The family of a model built by a user's own function (``MODULE:FUNCTION``).
USER_FAMILY = "user"
# Training defaults of a user's model: those of the zoo's digits models.
USER_TRAIN_DEFAULTS = {"epochs": 10, "time_steps": 4, "batch_size": 64, "lr": 1e-3, "encoding": "direct"}
# The embedded digits data's shape, until a data set says otherwise (``builder_config``).
_DEFAULT_INPUT, _DEFAULT_CLASSES = (1, 8, 8), 10


class UnknownModelError(RevsnnError):
    pass


class ModelBuilderError(UnknownModelError):
    """A ``MODULE:FUNCTION`` model that cannot be built: not importable, no such function, or it does not
    return an ``nn.Module``; one sentence."""


def all_configs() -> dict[str, dict[str, Any]]:
    """Every named configuration of every family, name -> config (with ``name`` filled in)."""
    configs: dict[str, dict[str, Any]] = {}
    for module_name in dict.fromkeys(FAMILY_MODULES.values()):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # a family not built yet
                continue
            raise
        for name, config in module.CONFIGS.items():
            configs[name] = {"name": name, **copy.deepcopy(config)}
    return configs


def is_builder_spec(name: str) -> bool:
    """Whether ``name`` names a user's function (``MODULE:FUNCTION``) rather than a model of the zoo."""
    return isinstance(name, str) and ":" in name


def _split_spec(spec: str) -> tuple[str, str]:
    module, _, function = spec.partition(":")
    if not (module and function and all(p.isidentifier() for p in module.split("."))
            and function.isidentifier()):
        raise ModelBuilderError(f"--model {spec!r} is neither a model of the zoo nor MODULE:FUNCTION (an "
                                "importable module and the name of a function in it, e.g. mymodels:build).")
    return module, function


def resolve_builder(spec: str) -> Callable[..., nn.Module]:
    """The function ``MODULE:FUNCTION`` names, importing MODULE (which runs its code). The current directory
    is searched first, as ``python -m`` does; every failure is a :class:`ModelBuilderError`."""
    module_name, function = _split_spec(spec)
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ModelBuilderError(f"cannot import module {module_name!r} for --model {spec}: there is no "
                                    f"{module_name.replace('.', '/')}.py in the current directory ({cwd}) or on "
                                    "PYTHONPATH; run from the folder that holds it or add that folder to "
                                    "PYTHONPATH.") from exc
        raise ModelBuilderError(f"importing {module_name!r} for --model {spec} failed: it imports {exc.name!r}, "
                                "which is not installed; install it or change the module.") from exc
    except Exception as exc:  # the user's module raised while importing: its own error, in one sentence
        raise ModelBuilderError(f"importing {module_name!r} for --model {spec} failed ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}); fix the module.") from exc
    finally:
        if added:
            sys.path.remove(cwd)
    fn = getattr(module, function, None)
    if fn is None or not callable(fn):
        what = "has no function" if fn is None else "has a non-callable"
        raise ModelBuilderError(f"module {module_name!r} ({getattr(module, '__file__', '?')}) {what} "
                                f"{function!r}; --model {spec} needs a function {function}(input_shape, "
                                "num_classes) that returns the model.")
    return fn


def builder_config(spec: str, input_shape=_DEFAULT_INPUT, num_classes: int = _DEFAULT_CLASSES,
                   train: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config of the model ``spec`` = ``MODULE:FUNCTION`` builds for ``input_shape`` and ``num_classes``
    (plain strings and ints: it is stored in checkpoints)."""
    _split_spec(spec)
    return {"name": spec, "family": USER_FAMILY, "builder": spec,
            "input_shape": [int(v) for v in input_shape], "num_classes": int(num_classes),
            "train": dict(train if train is not None else USER_TRAIN_DEFAULTS)}


def _reset_before_forward(module: nn.Module, args) -> None:
    from revsnn.neurons import reset_states

    reset_states(module)


def _build_user(config: dict[str, Any]) -> nn.Module:
    spec = config.get("builder") or ""
    fn = resolve_builder(spec)
    input_shape, num_classes = tuple(int(v) for v in config["input_shape"]), int(config["num_classes"])
    call = f"{spec}(input_shape={input_shape}, num_classes={num_classes})"
    try:
        model = fn(input_shape=input_shape, num_classes=num_classes)
    except Exception as exc:
        raise ModelBuilderError(f"{call} raised {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}; fix the function.") from exc
    if not isinstance(model, nn.Module):
        raise ModelBuilderError(f"{call} returned a {type(model).__name__}, not a torch.nn.Module; return the "
                                "model.")
    # revsnn's contract: every forward starts from rest, whether or not the user's forward resets.
    model.register_forward_pre_hook(_reset_before_forward)
    return model


def get_config(name: str) -> dict[str, Any]:
    configs = all_configs()
    if name not in configs and is_builder_spec(name):
        resolve_builder(name)  # fail now, with one sentence, if the module or the function is not there
        return builder_config(name)
    if name not in configs:
        raise UnknownModelError(f"Unknown model {name!r}; `revsnn models` lists the {len(configs)} known names.")
    return configs[name]


def build_model(config: dict[str, Any] | str) -> nn.Module:
    """Build a model from a config dict (as stored in a checkpoint) or a registered name."""
    if isinstance(config, str):
        config = get_config(config)
    family = config.get("family")
    if family == USER_FAMILY:
        model = _build_user(config)
        model.config = copy.deepcopy(config)
        return model
    if family not in FAMILY_MODULES:
        raise UnknownModelError(f"Unknown model family {family!r}; known: {', '.join(sorted(FAMILY_MODULES))}.")
    module = importlib.import_module(FAMILY_MODULES[family])
    model = module.build(copy.deepcopy(config))
    model.config = copy.deepcopy(config)
    return model
