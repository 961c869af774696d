"""mkdocs hooks: pages generated from the code at build time, so that nothing is written twice.

- ``cli.md``: ``flatsam CMD --help`` of every subcommand, from ``flatsam.cli.build_parser``;
- ``methods.md``: every registered method with its paper and each default with its source (the registry
  that ``flatsam methods`` prints), and the composable components;
- ``api/methods.md``: the API reference of every module that defines a registered preset;
- ``changelog.md``: ``CHANGELOG.md``;
- ``benchmarks/``: ``bench/README.md`` and each recorded suite's ``results.md`` (or ``speed.md``) with
  its plots.

Guides that other pages may not have written yet (``OPTIONAL``) leave the navigation when absent; a page
of ``docs/`` that the navigation does not name joins the Guides.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OPTIONAL = {"runs.md", "data-and-gpu.md", "entry-points.md"}
REPORTS = ("results.md", "speed.md")


def suites() -> list[str]:
    """Recorded benchmark folders that hold a report, in name order."""
    return sorted(d.name for d in BENCH.iterdir() if d.is_dir() and any((d / r).is_file() for r in REPORTS))


def _prune(nav: list[Any], docs: Path) -> list[Any]:
    """``nav`` without the optional guides that do not exist yet."""
    kept: list[Any] = []
    for item in nav:
        if isinstance(item, dict):
            ((title, value),) = item.items()
            if isinstance(value, list):
                item = {title: _prune(value, docs)}
            elif value in OPTIONAL and not (docs / value).is_file():
                continue
        kept.append(item)
    return kept


def _listed(nav: list[Any]) -> set[str]:
    """Every page file named in ``nav``."""
    found: set[str] = set()
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        found |= _listed(value) if isinstance(value, list) else {value}
    return found


def _adopt(nav: list[Any], docs: Path) -> list[Any]:
    """``nav`` with every top-level page of ``docs/`` it does not name added to the Guides, titled by its
    first heading, so that a guide written later is never left out of the site."""
    missing = sorted(p for p in docs.glob("*.md") if p.name not in _listed(nav))
    for i, item in enumerate(nav):
        if isinstance(item, dict) and "Guides" in item:
            added = [{(p.read_text().splitlines() or [p.stem])[0].lstrip("# "): p.name} for p in missing]
            nav[i] = {"Guides": item["Guides"] + added}
    return nav


def on_config(config: Any) -> Any:
    docs = Path(config["docs_dir"])
    nav = _adopt(_prune(config["nav"], docs), docs)
    for i, item in enumerate(nav):
        if isinstance(item, dict) and "Benchmarks" in item:
            pages = [{"Overview": "benchmarks/index.md"}]
            pages += [{name: f"benchmarks/{name}/index.md"} for name in suites()]
            nav[i] = {"Benchmarks": pages}
    config["nav"] = nav
    return config


def cli_page() -> str:
    import argparse

    from flatsam.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [
        "# Command line\n\n",
        "Generated at build time from the parser in `flatsam.cli`: each section is what "
        "`flatsam COMMAND --help` prints. `python -m flatsam` is the same program.\n\n",
        f"## `flatsam`\n\n```text\n{parser.format_help()}```\n\n",
    ]
    for name, command in sub.choices.items():
        parts.append(f"## `flatsam {name}`\n\n```text\n{command.format_help()}```\n\n")
    return "".join(parts)


def _target(obj: Any) -> Any:
    """The class or function behind a registry builder (``functools.partial`` unwrapped)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return obj


def _ref(obj: Any) -> str:
    """An mkdocstrings cross-reference to ``obj`` (a class or function of a documented module; a partial
    shows its fixed keywords)."""
    target = _target(obj)
    fixed = ", ".join(f"{k}={v!r}" for k, v in getattr(obj, "keywords", {}).items())
    name = f"{target.__name__}({fixed})" if fixed else target.__name__
    return f"[`{name}`][{target.__module__}.{target.__qualname__}]"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def methods_page() -> str:
    from flatsam.methods import METHODS
    from flatsam.perturbation import PERTURBATIONS
    from flatsam.reuse import REUSES
    from flatsam.schedule import SCHEDULES
    from flatsam.selection import SELECTIONS

    parts = [
        "# Methods and their sources\n\n",
        "Generated at build time from the method registry (`flatsam.METHODS`; the same as "
        "`flatsam methods --components`). Each default names where it comes from: the paper, the "
        "authors' code, or flatsam's own choice where neither fixes it.\n\n",
        "| name | what it does | source | preset |\n|---|---|---|---|\n",
    ]
    for info in METHODS.values():
        row = (f"`{info.name}`", _cell(info.summary), _cell(info.paper), _ref(info.build))
        parts.append("| " + " | ".join(row) + " |\n")
    for info in METHODS.values():
        parts.append(f"\n## `{info.name}`\n\n{_cell(info.summary)}. Source: {_cell(info.paper)}.\n\n")
        for key, default in info.defaults.items():
            parts.append(f"- `{key} = {default.value!r}`: {_cell(default.source)}\n")
        if info.needs:
            parts.append(f"- needs: {', '.join(info.needs)} (the harness fills them in)\n")
    parts.append(
        "\n## Components\n\nCompose them with `flatsam.SharpnessAware(params, base, schedule=..., "
        "selection=..., perturbation=..., reuse=...)` or `flatsam train --method custom --schedule S "
        "--selection S ... --opt selection.keep=0.3`.\n\n"
        "| kind | name | class | what it does |\n|---|---|---|---|\n"
    )
    for kind, table in (
        ("schedule", SCHEDULES),
        ("selection", SELECTIONS),
        ("perturbation", PERTURBATIONS),
        ("reuse", REUSES),
    ):
        for name, cls in table.items():
            doc = (inspect.getdoc(cls) or "").split("\n\n")[0]
            parts.append(f"| {kind} | `{name}` | {_ref(cls)} | {_cell(doc)} |\n")
    return "".join(parts)


def api_methods_page() -> str:
    from flatsam.methods import METHODS

    modules = list(dict.fromkeys(_target(info.build).__module__ for info in METHODS.values()))
    parts = [
        "# Presets and registry\n\n",
        "Every published method is a preset that builds `SharpnessAware` with the paper's defaults; "
        "the registry maps names to presets, defaults and sources.\n\n",
        "::: flatsam.methods.registry\n\n",
    ]
    parts += [f"::: {module}\n\n" for module in modules if module != "flatsam.methods.registry"]
    return "".join(parts)


def bench_files(config: Any) -> list[File]:
    """``bench/README.md`` as ``benchmarks/index.md``, and each suite's report and plots."""
    made = [File.generated(config, "benchmarks/index.md", content=(BENCH / "README.md").read_text())]
    for name in suites():
        folder = BENCH / name
        report = next(folder / r for r in REPORTS if (folder / r).is_file())
        made.append(File.generated(config, f"benchmarks/{name}/index.md", content=report.read_text()))
        for png in sorted(folder.glob("*.png")):
            made.append(File.generated(config, f"benchmarks/{name}/{png.name}", abs_src_path=str(png)))
    return made


def on_files(files: Files, config: Any) -> Files:
    pages = {
        "cli.md": cli_page(),
        "methods.md": methods_page(),
        "api/methods.md": api_methods_page(),
        "changelog.md": (ROOT / "CHANGELOG.md").read_text(),
    }
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    for file in bench_files(config):
        files.append(file)
    return files
