"""fedsim: federated-learning simulation with attack hooks for medical imaging."""

__version__ = "0.1.0"
