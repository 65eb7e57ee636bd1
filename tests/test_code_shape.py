"""The shape rules of the package (issue 16): short functions, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spurge"

#: Longest function allowed in spurge/, from its ``def`` line to its last line (decorators,
#: such as a click command's options, are declarations and do not count).
MAX_FUNCTION_LINES = 80


def long_functions(root: Path, limit: int) -> list[str]:
    """``path:line name (N lines)`` for every function or method under ``root`` over ``limit``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    where = path.relative_to(root.parent)
                    found.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_checker_measures_def_to_last_line(tmp_path: Path) -> None:
    """A planted 81-line function is found, an 80-line one and its decorators are not."""
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    decorators = "\n".join("@staticmethod" for _ in range(10))
    method_body = "\n".join(f"        x{i} = {i}" for i in range(79))
    source = f"{decorators}\ndef ok():\n{body}\n\n\nclass C:\n    def long(self):\n{method_body}\n"
    (package / "a.py").write_text(source + "        return 1\n")
    assert long_functions(package, 80) == ["pkg/a.py:94 long (81 lines)"]


def test_no_function_in_spurge_is_longer_than_80_lines() -> None:
    offenders = long_functions(PACKAGE, MAX_FUNCTION_LINES)
    assert not offenders, "split these into named steps:\n" + "\n".join(offenders)
