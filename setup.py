"""Build fedr and its C++ extension fedr._kernels (metadata is in pyproject.toml)."""

import tomllib
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

# One version, in pyproject.toml.
with open(Path(__file__).with_name("pyproject.toml"), "rb") as f:
    __version__ = tomllib.load(f)["project"]["version"]

ext_modules = [
    Pybind11Extension(
        "fedr._kernels",
        ["src_cpp/bindings.cpp"],
        include_dirs=["src_cpp"],
        depends=["src_cpp/weighted_average.hpp", "src_cpp/robust.hpp"],
        cxx_std=17,
        # Portable baseline x86-64: the AVX2+FMA loops are chosen at run time,
        # so no -march=native (it would emit AVX-512 the users' CPUs may lack).
        extra_compile_args=["-O3"],
        define_macros=[("VERSION_INFO", f'"{__version__}"')],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext}, zip_safe=False)
