"""Without its extra, each adapter fails at import with one line naming the pip extra."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    ("adapter", "blocked", "extra"),
    [
        ("lightning", ("lightning", "lightning.pytorch", "pytorch_lightning"), "lightning"),
        ("accelerate", ("accelerate", "accelerate.optimizer"), "accelerate"),
        ("transformers", ("transformers",), "transformers"),
    ],
)
def test_missing_extra_names_the_pip_extra(monkeypatch, adapter, blocked, extra):
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    monkeypatch.delitem(sys.modules, f"flatsam.integrations.{adapter}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'flatsam\[{extra}\]'"):
        importlib.import_module(f"flatsam.integrations.{adapter}")
