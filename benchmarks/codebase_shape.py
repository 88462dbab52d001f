"""The codebase's shape in numbers: what a newcomer has to hold in their head.

    python benchmarks/codebase_shape.py [ROOT]

Prints src lines (total and the five biggest files), the ten longest functions, the settings
fields (annotated fields of every `*Settings` / `*Config` class), the values in params.yaml,
and how many imports sit inside functions. Run it on two checkouts to compare them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml


def python_files(root: Path) -> list[Path]:
    return sorted((root / "src").rglob("*.py"))


def longest_functions(files: list[Path], root: Path, count: int = 10) -> list[tuple[int, str]]:
    found = []
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                found.append((length, f"{path.relative_to(root)}:{node.name}"))
    return sorted(found, reverse=True)[:count]


def settings_fields(files: list[Path]) -> tuple[int, int]:
    """(classes, annotated fields) over classes named *Settings or *Config."""
    classes = fields = 0
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Settings", "Config")):
                if node.name in {"ConfigDict"}:
                    continue
                body = [
                    n
                    for n in node.body
                    if isinstance(n, ast.AnnAssign)
                    and isinstance(n.target, ast.Name)
                    and not n.target.id.startswith("_")
                    and "ClassVar" not in ast.unparse(n.annotation)
                ]
                if body:
                    classes += 1
                    fields += len(body)
    return classes, fields


def imports(files: list[Path]) -> tuple[int, int]:
    """(all import statements, those inside a function body)."""
    total = inside = 0
    for path in files:
        tree = ast.parse(path.read_text())
        nested = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for child in ast.walk(node):
                    if isinstance(child, ast.Import | ast.ImportFrom):
                        nested.add(id(child))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                total += 1
        inside += len(nested)
    return total, inside


def params_values(path: Path) -> tuple[int, int]:
    """(lines, leaf values) of params.yaml; a list counts as one value."""

    def leaves(node) -> int:
        if isinstance(node, dict):
            return sum(leaves(v) for v in node.values())
        return 1

    text = path.read_text()
    return len(text.splitlines()), leaves(yaml.safe_load(text))


def main(root: Path) -> None:
    files = python_files(root)
    sizes = sorted(((len(p.read_text().splitlines()), p) for p in files), reverse=True)
    print(f"src lines: {sum(n for n, _ in sizes)} in {len(files)} files")
    print("biggest files:")
    for n, p in sizes[:5]:
        print(f"  {n:5d}  {p.relative_to(root)}")
    print("longest functions:")
    for n, name in longest_functions(files, root):
        print(f"  {n:5d}  {name}")
    classes, fields = settings_fields(files)
    print(f"settings: {classes} classes, {fields} fields")
    lines, values = params_values(root / "params.yaml")
    print(f"params.yaml: {lines} lines, {values} values")
    total, inside = imports(files)
    print(f"imports: {total}, inside functions: {inside}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
