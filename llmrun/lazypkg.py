"""Import a package's core submodule without running its `__init__` until something needs it.

`import llama_cpp` runs llama-cpp-python's `__init__`, which imports its high-level
`Llama` class, chat formats, jinja2 and numpy: 0.3 s of a one-shot `llmrun run`, for
code llmrun never calls. The engine needs only the ctypes bindings, `llama_cpp.llama_cpp`.

`defer_init("llama_cpp", "llama_cpp.llama_cpp")` puts the package in `sys.modules` with
its `__init__` not yet run. `import llama_cpp` and its submodules then import as usual;
a name the core module defines (`llama_cpp.llama_decode`) comes from it; any other
name (`llama_cpp.Llama`, `__version__`) runs the real `__init__` first, so code that
wants the whole package still gets it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def defer_init(package: str, core: str) -> None:
    """Register `package` uninitialised; names resolve from `core`, else from the full package.

    A no-op when the package is already imported or not installed (the import error
    then comes from the first real use, where it says what is missing).
    """
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)
    state: dict[str, Any] = {"initialised": False, "core": None}

    def __getattr__(name: str) -> Any:
        if not state["initialised"]:
            # The core's public names are what the real __init__'s `import *` would give.
            if not name.startswith("_"):
                # Held here: a destructor may look a name up while Python shuts down.
                if state["core"] is None:
                    state["core"] = importlib.import_module(core)
                value = getattr(state["core"], name, _MISSING)
                if value is not _MISSING:
                    setattr(module, name, value)  # found once, then a plain attribute
                    return value
            # `from llama_cpp import _ggml` asks for a submodule as an attribute first.
            if importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f"{package}.{name}")
        if state["initialised"]:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        state["initialised"] = True
        spec.loader.exec_module(module)
        return getattr(module, name)

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules[package] = module


_MISSING = types.SimpleNamespace()
