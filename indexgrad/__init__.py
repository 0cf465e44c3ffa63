"""indexgrad: layer equations in explicit index notation, their derived gradients, and a runner."""

from .derive import derive, derive_jvp
from .errors import IndexgradError, IndexgradWarning
from .gradcheck import GradcheckReport, gradcheck
from .memory import memory_limit, set_memory_limit
from .model import Model, compile
from .nodes import Program
from .syntax import load, parse

__all__ = [
    "GradcheckReport",
    "IndexgradError",
    "IndexgradWarning",
    "Model",
    "Program",
    "compile",
    "derive",
    "derive_jvp",
    "gradcheck",
    "load",
    "memory_limit",
    "parse",
    "set_memory_limit",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`indexgrad.torch` and `indexgrad.jax` load on first use, so importing indexgrad imports neither."""
    if name in ("torch", "jax"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'indexgrad' has no attribute '{name}'")
