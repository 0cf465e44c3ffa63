"""Hypothesis profiles: quick by default, long under `--hypothesis-profile=fuzz`."""

import os

from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=60)
settings.register_profile("fuzz", deadline=None, max_examples=5000)
# pytest's --hypothesis-profile flag is applied by hypothesis's plugin after this file loads,
# so it wins over the environment variable, which wins over "default".
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
