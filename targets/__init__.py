"""Targets: simulators and runtimes that run an exported file one time step at a time."""
