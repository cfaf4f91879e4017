"""Module and function sizes of the product and its shells (issue 15: no module over about 400 lines,
no function over about 60). Generated stubs (``*_pb2*.py``) and tests are not counted.

    python scripts/check_size.py                 # offenders only (exit 1 if any is not an exception)
    python scripts/check_size.py --modules 300   # every module of 300 lines and more
    python scripts/check_size.py --functions 40  # every function of 40 lines and more
    python scripts/check_size.py --root DIR ...   # another checkout (e.g. a git worktree of an old commit)

A module's size is its physical line count; a function's is from its ``def`` (decorators not
counted) to its last line, docstring and comments included. A nested function counts on its own and
inside its parent. tests/test_size.py runs :func:`offenders` against :data:`EXCEPTIONS`.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("coviax", "service", "clients", "trainer", "research", "cohort", "bench", "scripts")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Each exception says why; the module or function also says it in a comment at its top.
EXCEPTIONS: dict[str, str] = {}


@dataclass(frozen=True)
class Size:
    name: str  # "path" for a module, "path::Qualified.name" for a function
    lines: int


def python_files(root: Path = ROOT) -> list[Path]:
    files = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root)
            if "_pb2" in path.name or "tests" in rel.parts or ".venv" in rel.parts or "build" in rel.parts:
                continue
            files.append(path)
    return files


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node.end_lineno - node.lineno + 1
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def sizes(root: Path = ROOT) -> tuple[list[Size], list[Size]]:
    """(modules, functions), each largest first."""
    modules, functions = [], []
    for path in python_files(root):
        rel = path.relative_to(root).as_posix()
        text = path.read_text()
        modules.append(Size(rel, len(text.splitlines())))
        functions += [Size(f"{rel}::{name}", n) for name, n in _functions(ast.parse(text))]
    key = lambda s: (-s.lines, s.name)  # noqa: E731
    return sorted(modules, key=key), sorted(functions, key=key)


def offenders(root: Path = ROOT) -> list[Size]:
    modules, functions = sizes(root)
    return ([m for m in modules if m.lines > MAX_MODULE_LINES]
            + [f for f in functions if f.lines > MAX_FUNCTION_LINES])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, metavar="N", help="list modules of N lines and more")
    parser.add_argument("--functions", type=int, metavar="N", help="list functions of N lines and more")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    args = parser.parse_args(argv)
    modules, functions = sizes(args.root)
    if args.modules is not None or args.functions is not None:
        for m in modules if args.modules is not None else []:
            if m.lines >= args.modules:
                print(f"{m.lines:5d}  {m.name}")
        for f in functions if args.functions is not None else []:
            if f.lines >= args.functions:
                print(f"{f.lines:5d}  {f.name}")
        return 0
    bad = 0
    for s in offenders(args.root):
        why = EXCEPTIONS.get(s.name)
        print(f"{s.lines:5d}  {s.name}" + (f"  (exception: {why})" if why else ""))
        bad += why is None
    print(f"{bad} over {MAX_MODULE_LINES} lines a module / {MAX_FUNCTION_LINES} a function, not excepted")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
