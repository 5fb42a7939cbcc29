"""The fused conv2d + bias + ReLU + max_pool2d against a float64 reference through every backend available
here: the conformance suite's tests (cnnfast/testing/test_fused.py), run on the built-in backends."""
from cnnfast.testing.test_fused import *  # noqa: F401,F403
