"""Lava (Loihi 2 simulation) target: runs exported networks in lava-nc's bit-accurate CPU simulator.

This module will grow the netx runner later. Importing it installs `lava_compat` first, which lava-nc 0.10 and
lava-dl 0.6 need on Python 3.11, so import it before anything from `lava`.
"""

from revsnn.targets import lava_compat

lava_compat.install()


def loihi2_fixed_pt_config():
    """Run config that selects lava's bit-accurate fixed-point process models (what Loihi 2 computes)."""
    from lava.magma.core.run_configs import Loihi2SimCfg

    return Loihi2SimCfg(select_tag="fixed_pt")
