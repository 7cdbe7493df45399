"""Exporters: collapse reversible models into feedforward spiking graphs and write NIR, ONNX, netx."""
