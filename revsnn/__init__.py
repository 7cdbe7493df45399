"""revsnn: reversible spiking neural networks, trained with flat activation memory and exported to NIR,
ONNX and Lava (Loihi 2).

Training core. It knows nothing of exporters or targets (DESIGN §3).
"""

__version__ = "0.1.0"
