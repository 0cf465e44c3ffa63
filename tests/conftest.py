"""Hypothesis profiles: quick by default, long under `--hypothesis-profile=fuzz`; XLA compiles the
jax tests' computations without its slow LLVM passes (values, not speed, are tested)."""

import os

from hypothesis import settings

# make test draws the same cases every run; make fuzz draws new ones
settings.register_profile("default", deadline=None, max_examples=40, derandomize=True)
settings.register_profile("fuzz", deadline=None, max_examples=5000)
# pytest's --hypothesis-profile flag is applied by hypothesis's plugin after this file loads,
# so it wins over the environment variable, which wins over "default".
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# read when jax first compiles, so it must be set before any test runs jax (about a third less
# compile time for the examples' plans; the values agree with the numpy backend all the same)
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
