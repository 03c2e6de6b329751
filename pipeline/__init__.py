"""Sources, windows, orchestration, store and evaluation of anomstream."""

__version__ = "0.1.0"
