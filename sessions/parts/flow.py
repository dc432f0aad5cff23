"""IVR flows as data: parsing and validating flow files (YAML or TOML).

A flow is a set of named nodes and a ``start`` node. When a call enters a node, its steps run
in this order, each optional:

``set`` (variables) → ``say`` (text, ``{var}`` placeholders filled) → ``play`` (audio file)
→ ``webhook`` (POST the variables) → then exactly one way on: ``menu`` (wait for a key or a
spoken choice), ``gather`` (collect digits), ``record`` (record a message), ``goto`` (another
node) or ``hangup`` (end the call with a result).

Validation happens at start-up and names the file and node in every error: unknown target
nodes, nodes no path reaches, menus without a prompt, duplicate keys or words, bad keys, nodes
with no way on or with two.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Choice",
    "Flow",
    "FlowError",
    "Gather",
    "Menu",
    "Node",
    "Record",
    "Webhook",
    "load_flow",
    "load_flows",
    "parse_flow",
]

VALID_KEYS = set("0123456789*#ABCD")
_TERMINALS = ("menu", "gather", "record", "goto", "hangup")


class FlowError(ValueError):
    """A flow file that cannot run, with where and why."""


@dataclass(frozen=True)
class Choice:
    """One menu option: a DTMF key and/or spoken words, and where it leads."""

    goto: str
    key: str | None = None
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Menu:
    """Say a prompt and wait for a key or a spoken choice."""

    prompt: str
    choices: tuple[Choice, ...]
    timeout: float = 5.0
    retries: int = 2
    no_input: str | None = None  # node after the last retry timed out (None: hang up)
    no_match: str | None = None  # node after the last retry was invalid (None: hang up)
    retry_prompt: str | None = None
    barge_in: bool = True
    var: str | None = None  # store the choice's target (or key) under this variable


@dataclass(frozen=True)
class Gather:
    """Collect digits into a variable."""

    var: str
    next: str
    prompt: str | None = None
    count: int = 0  # 0: until the terminator or the inter-digit timeout
    terminator: str = "#"
    timeout: float = 6.0  # for the first digit
    inter_digit_timeout: float = 3.0
    barge_in: bool = True


@dataclass(frozen=True)
class Record:
    """Record the caller until the terminator key, silence, or the maximum length."""

    var: str
    next: str
    prompt: str | None = None
    max_seconds: float = 60.0
    silence_seconds: float = 3.0
    terminator: str = "#"
    beep: bool = True


@dataclass(frozen=True)
class Webhook:
    """POST the call's variables as JSON; the status lands in ``webhook_status``."""

    url: str
    timeout: float = 5.0


@dataclass(frozen=True)
class Node:
    """One step of a flow."""

    name: str
    set: dict[str, str] = field(default_factory=dict)
    say: tuple[str, ...] = ()
    play: str | None = None
    webhook: Webhook | None = None
    menu: Menu | None = None
    gather: Gather | None = None
    record: Record | None = None
    goto: str | None = None
    hangup: str | None = None  # the call's result
    barge_in: bool = False  # for ``say``

    def targets(self) -> list[str]:
        """Nodes this node can lead to."""
        out: list[str] = []
        if self.menu:
            out += [c.goto for c in self.menu.choices]
            out += [t for t in (self.menu.no_input, self.menu.no_match) if t]
        if self.gather:
            out.append(self.gather.next)
        if self.record:
            out.append(self.record.next)
        if self.goto:
            out.append(self.goto)
        return out

    def prompts(self) -> list[str]:
        """Fixed texts this node speaks (for pre-warming the prompt cache)."""
        texts = [t for t in self.say if "{" not in t]
        for part in (self.menu, self.gather, self.record):
            prompt = getattr(part, "prompt", None)
            if prompt and "{" not in prompt:
                texts.append(prompt)
        if self.menu and self.menu.retry_prompt:
            texts.append(self.menu.retry_prompt)
        return texts


@dataclass(frozen=True)
class Flow:
    """A validated flow."""

    name: str
    start: str
    nodes: dict[str, Node]
    sorry: str = "Sorry, I did not get that."
    source: str = ""

    def prompts(self) -> list[str]:
        """Every fixed text of the flow, once."""
        seen: dict[str, None] = {self.sorry: None}
        for node in self.nodes.values():
            for text in node.prompts():
                seen[text] = None
        return list(seen)


def _err(source: str, where: str, message: str) -> FlowError:
    return FlowError(f"{source}: {where}: {message}")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _num(raw: dict[str, Any], key: str, default: float, src: str, where: str) -> float:
    value = raw.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise _err(src, where, f"{key} must be a non-negative number, not {value!r}")
    return float(value)


def _keys_ok(keys: str, src: str, where: str) -> str:
    if not keys or any(k not in VALID_KEYS for k in keys):
        raise _err(src, where, f"{keys!r} is not a DTMF key (0-9 * # A-D)")
    return keys


def _parse_menu(raw: Any, src: str, where: str) -> Menu:
    if not isinstance(raw, dict):
        raise _err(src, where, "menu must be a table")
    prompt = raw.get("prompt")
    if not prompt or not isinstance(prompt, str):
        raise _err(src, where, "menu has no prompt")
    choices = []
    seen_keys: set[str] = set()
    seen_words: set[str] = set()
    for i, c in enumerate(_as_list(raw.get("choices"))):
        cw = f"{where}.choices[{i}]"
        if not isinstance(c, dict) or "goto" not in c:
            raise _err(src, cw, "a choice needs goto")
        key = c.get("key")
        if key is not None:
            key = _keys_ok(str(key), src, cw)
            if len(key) != 1:
                raise _err(src, cw, f"key {key!r} must be one key")
            if key in seen_keys:
                raise _err(src, cw, f"duplicate key {key!r}")
            seen_keys.add(key)
        words = tuple(str(w).lower().strip() for w in _as_list(c.get("words")))
        for w in words:
            if w in seen_words:
                raise _err(src, cw, f"duplicate word {w!r}")
            seen_words.add(w)
        if key is None and not words:
            raise _err(src, cw, "a choice needs a key or words")
        choices.append(Choice(goto=str(c["goto"]), key=key, words=words))
    if not choices:
        raise _err(src, where, "menu has no choices")
    return Menu(
        prompt=prompt, choices=tuple(choices),
        timeout=_num(raw, "timeout", 5.0, src, where),
        retries=int(_num(raw, "retries", 2, src, where)),
        no_input=raw.get("no_input"), no_match=raw.get("no_match"),
        retry_prompt=raw.get("retry_prompt"), barge_in=bool(raw.get("barge_in", True)),
        var=raw.get("var"),
    )


def _parse_node(name: str, raw: Any, src: str) -> Node:
    where = f"node {name!r}"
    if not isinstance(raw, dict):
        raise _err(src, where, "must be a table")
    known = {"set", "say", "play", "webhook", "menu", "gather", "record", "goto", "hangup",
             "barge_in"}
    unknown = set(raw) - known
    if unknown:
        raise _err(src, where, f"unknown field(s) {', '.join(sorted(unknown))}")
    ways = [k for k in _TERMINALS if k in raw]
    if not ways:
        raise _err(src, where, "no way on: add menu, gather, record, goto or hangup")
    if len(ways) > 1:
        raise _err(src, where, f"more than one way on: {', '.join(ways)}")
    webhook = None
    if "webhook" in raw:
        wh = raw["webhook"]
        wh = {"url": wh} if isinstance(wh, str) else wh
        if not isinstance(wh, dict) or not str(wh.get("url", "")).startswith(("http://", "https://")):
            raise _err(src, where, "webhook needs an http(s) url")
        webhook = Webhook(url=str(wh["url"]), timeout=_num(wh, "timeout", 5.0, src, where))
    gather = record = None
    if "gather" in raw:
        g = raw["gather"]
        if not isinstance(g, dict) or "var" not in g or "next" not in g:
            raise _err(src, where, "gather needs var and next")
        term = str(g.get("terminator", "#"))
        if term:
            _keys_ok(term, src, where)
        gather = Gather(
            var=str(g["var"]), next=str(g["next"]), prompt=g.get("prompt"),
            count=int(_num(g, "count", 0, src, where)), terminator=term,
            timeout=_num(g, "timeout", 6.0, src, where),
            inter_digit_timeout=_num(g, "inter_digit_timeout", 3.0, src, where),
        )
        if gather.count == 0 and not term:
            raise _err(src, where, "gather needs a count or a terminator")
    if "record" in raw:
        r = raw["record"]
        if not isinstance(r, dict) or "var" not in r or "next" not in r:
            raise _err(src, where, "record needs var and next")
        term = str(r.get("terminator", "#"))
        if term:
            _keys_ok(term, src, where)
        record = Record(
            var=str(r["var"]), next=str(r["next"]), prompt=r.get("prompt"),
            max_seconds=_num(r, "max_seconds", 60.0, src, where),
            silence_seconds=_num(r, "silence_seconds", 3.0, src, where),
            terminator=term, beep=bool(r.get("beep", True)),
        )
    sets = raw.get("set") or {}
    if not isinstance(sets, dict):
        raise _err(src, where, "set must be a table of variables")
    hangup = raw.get("hangup")
    if hangup is True or hangup == {}:
        hangup = "done"
    elif isinstance(hangup, dict):
        hangup = str(hangup.get("result", "done"))
    elif hangup is not None:
        hangup = str(hangup)
    return Node(
        name=name, set={str(k): str(v) for k, v in sets.items()},
        say=tuple(str(s) for s in _as_list(raw.get("say"))), play=raw.get("play"),
        webhook=webhook,
        menu=_parse_menu(raw["menu"], src, where + ".menu") if "menu" in raw else None,
        gather=gather, record=record,
        goto=str(raw["goto"]) if "goto" in raw else None, hangup=hangup,
        barge_in=bool(raw.get("barge_in", False)),
    )


def parse_flow(data: Any, source: str = "<flow>") -> Flow:
    """Build and validate a flow from parsed YAML/TOML data."""
    if not isinstance(data, dict):
        raise FlowError(f"{source}: a flow must be a table with start and nodes")
    nodes_raw = data.get("nodes")
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        raise FlowError(f"{source}: no nodes")
    start = data.get("start")
    if not start:
        raise FlowError(f"{source}: no start node")
    nodes = {str(name): _parse_node(str(name), raw, source) for name, raw in nodes_raw.items()}
    if start not in nodes:
        raise FlowError(f"{source}: start node {start!r} does not exist")
    for node in nodes.values():
        for target in node.targets():
            if target not in nodes:
                raise _err(source, f"node {node.name!r}", f"unknown node {target!r}")
        if node.play and not re.match(r"^[\w./-]+$", node.play):
            raise _err(source, f"node {node.name!r}", f"bad file name {node.play!r}")
    reached = {start}
    todo = [start]
    while todo:
        for target in nodes[todo.pop()].targets():
            if target not in reached:
                reached.add(target)
                todo.append(target)
    unreachable = sorted(set(nodes) - reached)
    if unreachable:
        raise FlowError(f"{source}: unreachable node(s): {', '.join(unreachable)}")
    name = str(data.get("name") or Path(source).stem)
    sorry = str(data.get("sorry", "Sorry, I did not get that."))
    return Flow(name=name, start=str(start), nodes=nodes, sorry=sorry, source=source)


class _FlowLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. Under YAML 1.1 rules ``goto: yes`` or
    ``words: [no]`` would silently become booleans, and IVR menus are full of yes and no."""


_FlowLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_FlowLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_flow(path: str | Path) -> Flow:
    """Read and validate one ``.yaml``/``.yml``/``.toml`` flow file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FlowError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.load(text, _FlowLoader)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise FlowError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    return parse_flow(data, str(path))


def load_flows(directory: str | Path) -> dict[str, Flow]:
    """Every flow in a directory, by name. All are validated; the first error is raised."""
    flows: dict[str, Flow] = {}
    for path in sorted(Path(directory).glob("*")):
        if path.suffix in (".yaml", ".yml", ".toml"):
            flow = load_flow(path)
            if flow.name in flows:
                raise FlowError(f"{path}: a flow named {flow.name!r} already exists")
            flows[flow.name] = flow
    return flows
