"""Build script. The package is pure Python until the C++/CUDA extension (cnnfast._C) lands."""
from setuptools import setup

setup()
