"""Adapters for training frameworks, each an optional extra (import-guarded):

- :mod:`flatsam.integrations.lightning`: ``pip install 'flatsam[lightning]'``
- :mod:`flatsam.integrations.accelerate`: ``pip install 'flatsam[accelerate]'``
- :mod:`flatsam.integrations.transformers`: ``pip install 'flatsam[transformers]'``

``pip install 'flatsam[integrations]'`` installs all three.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or fail with one line naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{feature} needs the package {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'flatsam[{extra}]'"
        ) from error
