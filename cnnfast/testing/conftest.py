"""The suite's setup, loaded by pytest for the suite's own files (``pytest --pyargs cnnfast.testing``).

Importing it sets the process up before any test imports triton (the Triton interpreter without a
GPU, poisoned outputs, no measuring tuner); the fixtures and hooks are ``cnnfast.testing.fixtures``'.
"""
from cnnfast.testing import _setup

_setup.prepare()

from cnnfast.testing.fixtures import *  # noqa: E402,F401,F403
