"""``python -m cnnfast.train`` (and ``torchrun ... -m cnnfast.train``): the ``cnnfast train`` command."""
import sys

from . import main

sys.exit(main(prog="python -m cnnfast.train"))
