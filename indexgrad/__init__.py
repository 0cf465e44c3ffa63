"""indexgrad: layer equations in explicit index notation, their derived gradients, and a runner."""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

# The public names load on first use (PEP 562), so that `import indexgrad` is quick and the
# `indexgrad` command can take Ctrl-C from its first moment (see __main__.py), before numpy loads.
_HOMES = {
    "GradcheckReport": "gradcheck",
    "IndexgradError": "errors",
    "IndexgradWarning": "errors",
    "Model": "model",
    "Program": "nodes",
    "compile": "model",
    "derive": "derive",
    "derive_jvp": "derive",
    "gradcheck": "gradcheck",
    "load": "syntax",
    "memory_limit": "memory",
    "parse": "syntax",
    "set_memory_limit": "memory",
}

__all__ = [  # the keys of _HOMES, written out for tools that read __all__ without running it
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


class _Package(ModuleType):
    """The package: importing the submodule indexgrad.derive (or .gradcheck) binds the module to
    the package's name `derive`; the function of that name keeps it, as an eager `from .derive
    import derive` here would have it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and _HOMES.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """The public names, and the modules `indexgrad.torch` and `indexgrad.jax`, load on first use."""
    if name in ("torch", "jax"):
        import_module(".backends", __name__).require(name, f"indexgrad.{name}")
        return import_module(f".{name}", __name__)
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'indexgrad' has no attribute '{name}'")
    value = getattr(import_module(f".{home}", __name__), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .derive import derive, derive_jvp
    from .errors import IndexgradError, IndexgradWarning
    from .gradcheck import GradcheckReport, gradcheck
    from .memory import memory_limit, set_memory_limit
    from .model import Model, compile
    from .nodes import Program
    from .syntax import load, parse
