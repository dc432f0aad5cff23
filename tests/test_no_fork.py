"""No product module may start a process except through ``helpers/spawn.py``.

The server once hung for good in a ``fork()`` (uvloop's ``create_subprocess_exec``) while
another thread was inside OpenBLAS; ``helpers.spawn`` starts children by vfork/posix_spawn.
This walks the product's source so that a new spawner cannot slip in unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("audiosocket", "sessions", "helpers", "web", "models")
ALLOWED = {ROOT / "helpers" / "spawn.py"}

#: Calls that fork (directly, or through an event loop's or a library's spawner).
FORKING_ATTRS = {
    "fork", "forkpty", "system", "popen", "spawnl", "spawnle", "spawnlp", "spawnlpe",
    "spawnv", "spawnve", "spawnvp", "spawnvpe", "create_subprocess_exec",
    "create_subprocess_shell", "subprocess_exec", "subprocess_shell",
}
FORBIDDEN_MODULES = {"subprocess", "multiprocessing", "pty", "concurrent.futures.process"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in FORBIDDEN_MODULES or alias.name.startswith("multiprocessing"):
                    found.append(f"{where} imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod in FORBIDDEN_MODULES or mod.startswith("multiprocessing"):
                found.append(f"{where} imports from {mod}")
        elif isinstance(node, ast.Attribute) and node.attr in FORKING_ATTRS:
            found.append(f"{where} uses .{node.attr}")
        elif isinstance(node, ast.keyword) and node.arg == "preexec_fn":
            found.append(f"{where} passes preexec_fn (forces fork)")
    return found


def test_only_helpers_spawn_starts_processes() -> None:
    files = [p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py") if p not in ALLOWED]
    assert len(files) > 50  # the walk really covers the product
    problems = [v for f in files for v in _violations(f)]
    assert problems == [], "start processes through helpers.spawn:\n" + "\n".join(problems)


def test_the_check_catches_a_forking_spawner(tmp_path: Path) -> None:
    bad = tmp_path / "forking_example.py"
    bad.write_text(
        "import asyncio, os\n"
        "async def f():\n"
        "    await asyncio.create_subprocess_exec('ffmpeg')\n"
        "    os.fork()\n"
    )
    found = _violations(bad)
    assert any("create_subprocess_exec" in v for v in found)
    assert any(".fork" in v for v in found)
