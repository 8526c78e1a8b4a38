"""Import one submodule of a package without running the package's `__init__.py`.

Some packages (controlnet-aux, facexlib) import every model they have from `__init__.py`, and several of those
need libraries this server does not install (torchvision has no build for the pinned CPU torch; timm, mediapipe,
scikit-image). The submodules we use need none of them, so the package is registered as a bare module whose
`__path__` is its directory: Python then finds its submodules there and never executes the `__init__`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

from loaders.errors import Unavailable

_LOCK = threading.Lock()


def import_without_init(package: str, submodule: str) -> types.ModuleType:
    """`package.submodule`, imported with `package` a bare namespace (its `__init__.py` is never run, nor that of
    any package between them: `submodule` may be dotted, "open_pose.util").

    A package already imported for real (its `__init__` ran elsewhere) is used as it is. Unavailable (503) when
    the package is not installed, so a server without the optional extra says what is missing.
    """
    name = f"{package}.{submodule}"
    parts = name.split(".")
    with _LOCK:  # two first requests at once must not each register their own bare package
        for depth in range(1, len(parts)):  # every package above the module is bare, nested ones ("a.b.c") too
            _register_bare(".".join(parts[:depth]))
    return importlib.import_module(name)  # waits on a module another thread is still importing


def _register_bare(package: str) -> None:
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)  # its parent is already registered, so this runs no __init__
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"the {package.split('.')[0]} package is not installed on this server")
    bare = types.ModuleType(package)
    bare.__path__ = list(spec.submodule_search_locations)
    bare.__package__ = package
    bare.__spec__ = spec  # importlib reads the parent's spec; its loader is never asked to execute it
    sys.modules[package] = bare
