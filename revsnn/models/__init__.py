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
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import copy
import importlib
from typing import Any

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

__all__ = ["FAMILY_MODULES", "all_configs", "get_config", "build_model", "UnknownModelError"]


class UnknownModelError(RevsnnError):
    pass


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


def get_config(name: str) -> dict[str, Any]:
    configs = all_configs()
    if name not in configs:
        raise UnknownModelError(f"Unknown model {name!r}; `revsnn models` lists the {len(configs)} known names.")
    return configs[name]


def build_model(config: dict[str, Any] | str) -> nn.Module:
    """Build a model from a config dict (as stored in a checkpoint) or a registered name."""
    if isinstance(config, str):
        config = get_config(config)
    family = config.get("family")
    if family not in FAMILY_MODULES:
        raise UnknownModelError(f"Unknown model family {family!r}; known: {', '.join(sorted(FAMILY_MODULES))}.")
    module = importlib.import_module(FAMILY_MODULES[family])
    model = module.build(copy.deepcopy(config))
    model.config = copy.deepcopy(config)
    return model
