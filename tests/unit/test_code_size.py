"""Size limits of the production code: no function over 60 lines, no module over 500 (the
generated protobuf code aside), so that a module keeps one responsibility."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = [*(ROOT / name / "src" for name in ("core", "tasks", "cli", "testing")), *sorted((ROOT / "services").glob("*/src"))]
GENERATED = ROOT / "core" / "src" / "fedstream" / "v1"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500


def sources() -> list[Path]:
    return sorted(
        path for root in SOURCE_ROOTS for path in root.rglob("*.py") if not path.is_relative_to(GENERATED)
    )


def oversized(path: Path) -> list[str]:
    """What in one module is over its limit, each as 'path[:line] what (n lines)'."""
    text = path.read_text()
    name = path.relative_to(ROOT).as_posix()
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name} module ({lines} lines)")
    for node in ast.walk(ast.parse(text, filename=name)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        assert node.end_lineno is not None
        length = node.end_lineno - node.lineno + 1  # from the def line to the body's last line
        if length > MAX_FUNCTION_LINES:
            found.append(f"{name}:{node.lineno} {node.name}() ({length} lines)")
    return found


def test_the_sources_are_found():
    assert len(sources()) > 50
    assert all(root.is_dir() for root in SOURCE_ROOTS)


def test_no_function_over_60_lines_and_no_module_over_500():
    found = [problem for path in sources() for problem in oversized(path)]

    assert not found, "over the size limits:\n" + "\n".join(found)
