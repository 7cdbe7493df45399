"""A Lava sink process that saves what it received to a file on its last step (see ``targets/lava.py``).

It sits alone in this package because Lava's compiler looks for a process's models by importing every
module in the process's directory, each as a top-level module.
"""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

__all__ = ["SpikeFile"]


class SpikeFile(AbstractProcess):
    """A sink that records its input every step and saves the record (``np.save``) to ``path`` on the last one."""

    def __init__(self, shape: tuple[int, ...], steps: int, path: str):
        super().__init__(shape=shape, steps=steps, path=path)
        self.a_in = InPort(shape=shape)


@implements(proc=SpikeFile, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeFileModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.steps, self.path = int(proc_params["steps"]), proc_params["path"]
        self.record = np.zeros((*proc_params["shape"], self.steps), dtype=np.int8)

    def run_spk(self) -> None:
        self.record[..., self.time_step - 1] = self.a_in.recv()
        if self.time_step == self.steps:
            np.save(self.path, self.record)
