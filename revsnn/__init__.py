"""revsnn: reversible spiking neural networks, trained with flat activation memory and exported to NIR,
ONNX and Lava (Loihi 2).

Training core. It knows nothing of exporters or targets (DESIGN §3).
"""

__version__ = "0.1.0"


def collapse(model, input_shape, time_steps):
    """Collapse ``model`` (any module made of torch.nn layers and revsnn's blocks, applied to
    ``[time_steps, B, *input_shape]``) into a feedforward spiking graph: ``Collapsed.graph`` is a ``nir.NIRGraph``
    that ``revsnn.exporters.nir_file.write_nir``, ``revsnn.exporters.onnx_file.write_onnx`` and
    ``revsnn.pipeline.export_lava`` write. The public face of ``revsnn.exporters.collapse``; importing it here
    lazily keeps the training core free of exporters (DESIGN §3)."""
    from revsnn.exporters.collapse import collapse as _collapse

    return _collapse(model, int(time_steps), tuple(input_shape))
