"""max_pool2d values, indices and gradients against PyTorch through every backend available here: the
conformance suite's tests (cnnfast/testing/test_max_pool2d.py), run on the built-in backends."""
from cnnfast.testing.test_max_pool2d import *  # noqa: F401,F403
