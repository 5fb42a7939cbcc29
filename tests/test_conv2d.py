"""conv2d against a float64 reference through every backend available here: the conformance suite's
tests (cnnfast/testing/test_conv2d.py), run on the built-in backends."""
from cnnfast.testing.test_conv2d import *  # noqa: F401,F403
