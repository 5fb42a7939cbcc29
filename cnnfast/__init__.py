"""cnnfast: hand-written GPU kernels for convolutional networks, as drop-in PyTorch layers."""
from . import backends, functional, nn
from .convert import convert
from .models import Net

__version__ = "0.1.0"
__all__ = ["backends", "functional", "nn", "convert", "Net", "__version__"]
