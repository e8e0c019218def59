"""The library stays plain Python: Prefect belongs to tasks/ and flows/ only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "stillroom"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_library_module_imports_prefect() -> None:
    offenders = [p.name for p in LIBRARY.rglob("*.py") if "prefect" in imported_roots(p)]
    assert offenders == []


def test_importing_the_whole_library_does_not_pull_in_prefect() -> None:
    modules = [
        "stillroom." + ".".join(p.relative_to(LIBRARY).with_suffix("").parts)
        for p in LIBRARY.rglob("*.py")
        if p.name != "__init__.py" and "metrics" not in p.parts
    ]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += "assert 'prefect' not in sys.modules, 'prefect was imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
