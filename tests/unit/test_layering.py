"""Production code imports nothing from research (issue 20).

Production: the gateway, the model-server side (``service.modelserver``), the defense
core, the decoder, the option machinery (``service.options``, ``service.config``) and
every command except the research commands in :data:`RESEARCH_COMMANDS`. Research:
everything under ``service.research``.

Two checks. The static one reads every ``import`` in ``service/`` (those inside
functions too, which run only when a command does) and follows them from each
production module through the whole package; the runtime one imports the production
modules in a fresh interpreter and looks at ``sys.modules``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"

RESEARCH = ("service.research",)
#: commands that exist to drive research code: ``train`` (service.research.train), ``toy-data``
#: (service.research.toy) and ``real-clips`` (service.research.real_clips). Every other command is
#: production (``real-set`` included: it builds its set from the models and the decoder).
RESEARCH_COMMANDS = frozenset({"train", "toy_data", "real_clips"})
#: the packages that serve (every module in them is production)
PRODUCTION_PACKAGES = frozenset({"gateway", "modelserver", "core", "decoder"})
PRODUCTION_SINGLES = ("service.options", "service.config")


def _is_research(name: str) -> bool:
    return any(name == r or name.startswith(r + ".") for r in RESEARCH)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SERVICE.rglob("*.py")}


def _production() -> list[str]:
    names = []
    for name in _modules():
        group, _, rest = name.removeprefix("service.").partition(".")
        if group in PRODUCTION_PACKAGES or (group == "commands" and rest not in RESEARCH_COMMANDS):
            names.append(name)
    return sorted(names) + list(PRODUCTION_SINGLES)


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> the modules importing it runs: ``a``, ``a.b``, ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def _imports(module: str) -> frozenset[str]:
    """The ``service`` modules ``module`` imports anywhere in its source."""
    modules = _modules()
    path = modules[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module pkg.mod
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            found.update(m for m in _with_parents(target) if m in modules)
    return frozenset(found)


def _research_paths(start: str) -> list[list[str]]:
    """Import chains from ``start`` to a research module (breadth first, shortest)."""
    chains, seen, queue = [], {start}, [[start]]
    while queue:
        chain = queue.pop(0)
        for nxt in sorted(_imports(chain[-1])):
            if nxt in seen:
                continue
            seen.add(nxt)
            if _is_research(nxt):
                chains.append([*chain, nxt])
            else:
                queue.append([*chain, nxt])
    return chains


def test_the_production_list_is_real() -> None:
    """The lists name modules that exist (a rename must update them, not skip them)."""
    production = _production()
    modules = _modules()
    assert all(name in modules for name in production)
    assert {"service.gateway.app", "service.commands.serve", "service.modelserver.handler"} <= set(
        production
    )
    assert all(f"service.commands.{c}" in modules for c in RESEARCH_COMMANDS)


def test_the_static_check_sees_a_research_import() -> None:
    """Sanity: the walk finds the research modules the research commands import."""
    assert _research_paths("service.commands.train")
    assert _research_paths("service.commands.toy_data")


@pytest.mark.parametrize("module", _production())
def test_production_module_imports_no_research(module: str) -> None:
    chains = _research_paths(module)
    assert not chains, "production imports research: " + "; ".join(
        " -> ".join(chain) for chain in chains
    )


def test_importing_production_loads_no_research() -> None:
    """Every production module imported in one fresh interpreter: no research module
    is in ``sys.modules`` afterwards."""
    code = (
        "import importlib, sys\n"
        f"for name in {_production()!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = done.stdout.split()
    assert "service.gateway.app" in loaded and "service.modelserver.handler" in loaded
    assert [m for m in loaded if _is_research(m)] == []
