"""Importing this module registers the example backends: ``pytest -p cnnfast_example_backend.autoregister``."""
from . import register_backends

register_backends()
