"""Names of a package imported when first used (PEP 562), so importing the package, or a light
module of it, does not import the heavy modules behind those names.

What belongs here: `lazy_names`, the one module `__getattr__` that `podnet.lab` and
`podnet.store` use for this. A package lists the names under `if TYPE_CHECKING:` as ordinary
imports too, so type checkers and readers see what they are.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, where: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: name -> (module, attribute) in `where`, imported
    at the first use and then kept as an ordinary attribute of the package."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = where[name]
        value = getattr(importlib.import_module(module), attribute)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
