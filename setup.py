"""Build the optional C accelerator; everything else is in pyproject.toml.

BUILD_EXTENSION=yes makes a failed build fatal (release wheels); =no skips it; unset tries and
falls back to pure Python when there is no compiler.
"""

import os

from setuptools import Extension, setup

mode = os.environ.get("BUILD_EXTENSION", "auto").lower()
ext_modules = []
if mode != "no":
    ext_modules.append(
        Extension(
            "tether.accel._speedups",
            sources=["src/tether/accel/_speedups.c"],
            extra_compile_args=["-O3"] if os.name == "posix" else [],
            optional=mode != "yes",
        )
    )

setup(ext_modules=ext_modules)
