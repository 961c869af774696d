"""The README and the documentation site: what the README must say (and where its numbers come from),
that its links and methods exist, the pages generated from the code, and a strict build of the site."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flatsam

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section of a Markdown text."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_readme_is_short_and_names_the_two_commands():
    assert len(README.splitlines()) <= 260
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line.split("#")[0].strip() for line in ci.splitlines() if line.startswith("make t"))
    assert f"{test_command}          # set up and run the tests" in README  # the command CI runs
    assert "make bench-quick   #" in README
    titles = ("Quick start", "Which method should I use?", "In your framework", "Methods", "Documentation")
    for title in titles:
        assert f"\n## {title}\n" in README


def test_readme_results_are_bench_readmes_numbers():
    bench = (ROOT / "bench" / "README.md").read_text()
    table = section(README, "The result")
    numbers = re.findall(r"\d+\.\d\d ± \d+\.\d\d", table)
    assert len(numbers) >= 12
    for number in numbers:
        assert number in bench, number
    # the settings fixed in advance (the worst case) come before those where the preset was tuned
    assert table.index("**Fixed in advance") < table.index("**Where the preset was tuned**")
    assert "(bench/README.md)" in table and "(bench/grid/results.md)" in table


def test_readme_links_exist():
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)
    assert "docs/guide.md" in links
    for link in links:
        assert (ROOT / link).exists(), link


def test_readme_methods_are_registered_presets():
    rows = re.findall(r"^\| \**`([\w-]+)`\** \| `flatsam\.(\w+)", section(README, "Methods"), re.MULTILINE)
    assert len(rows) >= 20
    for name, preset in rows:
        assert name in flatsam.METHODS, name
        assert preset in flatsam.__all__, preset


def test_everything_removed_from_the_readme_is_in_the_docs():
    """Sentences of the 0.1.0 README's engine and harness sections live on in the guide and results."""
    docs = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for fact in (
        "pytorch/pytorch#56297",
        "`sync_free=True`/`False` forces either",
        "`--smoothing-form authors`",
        '`bn_updates="every"`',
        "a second Ctrl-C stops at once",
        "`--perturb-step-sizes`",
        "0.892 [0.790, 0.934]",
        "AUSAM adds 8 bytes per training sample",
    ):
        assert fact in docs, fact


@pytest.fixture(scope="module")
def hooks():
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_page_is_the_parsers_help(hooks):
    page = hooks.cli_page()
    for command in ("train", "bench", "report", "methods"):
        assert f"## `flatsam {command}`" in page and f"usage: flatsam {command}" in page
    assert "--epochs EPOCHS" in page and "(default: 30)" in page


def test_methods_page_lists_every_registered_method(hooks):
    page = hooks.methods_page()
    for info in flatsam.METHODS.values():
        assert f"| `{info.name}` |" in page and f"## `{info.name}`" in page
        for key in info.defaults:
            assert f"- `{key} = " in page
    assert "| selection | `adlp` | [`ADLPSampler`][flatsam.selection.ADLPSampler]" in page


def test_benchmark_pages_cover_every_recorded_suite(hooks):
    names = hooks.suites()
    assert {"default", "long-n40-crop", "speed"} <= set(names)


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_site_builds_strictly_and_a_broken_reference_fails(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "engine" / "index.html").read_text().count("SharpnessAware") > 5
    # the same site with one broken API reference must fail
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copy(ROOT / "CHANGELOG.md", copy / "CHANGELOG.md")
    for name in ("src", "bench"):
        (copy / name).symlink_to(ROOT / name)
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text() + "\nSee [`Nowhere`][flatsam.engine.Nowhere].\n")
    broken = build(copy / "mkdocs.yml", tmp_path / "broken")
    assert broken.returncode != 0 and "flatsam.engine.Nowhere" in broken.stderr
