"""Flow files: parsing, and a clear error for each way a flow can be wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sessions.parts.flow import FlowError, load_flow, load_flows, parse_flow

DEMO = Path(__file__).resolve().parents[3] / "sessions" / "flows" / "demo.yaml"


def base() -> dict[str, Any]:
    return {
        "start": "a",
        "nodes": {
            "a": {"menu": {"prompt": "pick", "choices": [
                {"key": "1", "words": ["sales"], "goto": "b"},
                {"key": "2", "goto": "c"},
            ]}},
            "b": {"say": "bye", "hangup": "sales"},
            "c": {"gather": {"var": "acct", "count": 4, "next": "b"}},
        },
    }


def test_demo_flow_is_valid() -> None:
    flow = load_flow(DEMO)
    assert flow.start == "greeting"
    menu = flow.nodes["menu"].menu
    assert menu is not None
    assert {c.key for c in menu.choices} == {"1", "2", "3"}
    assert "Welcome to the demo line." in flow.prompts()


def test_toml_flows_load(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text(
        'start = "a"\n[nodes.a]\nsay = "hi"\nhangup = "done"\n'
    )
    flows = load_flows(tmp_path)
    assert flows["x"].nodes["a"].hangup == "done"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f["nodes"]["a"]["menu"]["choices"][0].update(goto="zz"), "unknown node 'zz'"),
        (lambda f: f["nodes"].update(orphan={"hangup": True}), "unreachable node(s): orphan"),
        (lambda f: f["nodes"]["a"]["menu"].pop("prompt"), "menu has no prompt"),
        (lambda f: f["nodes"]["a"]["menu"]["choices"][1].update(key="1"), "duplicate key '1'"),
        (lambda f: f["nodes"]["a"]["menu"]["choices"][1].update(words=["sales"]),
         "duplicate word 'sales'"),
        (lambda f: f["nodes"]["a"]["menu"]["choices"][1].update(key="x"), "not a DTMF key"),
        (lambda f: f["nodes"]["b"].pop("hangup"), "no way on"),
        (lambda f: f["nodes"]["b"].update(goto="a"), "more than one way on"),
        (lambda f: f.update(start="nope"), "start node 'nope' does not exist"),
        (lambda f: f["nodes"]["c"]["gather"].pop("next"), "gather needs var and next"),
        (lambda f: f["nodes"]["b"].update(colour="red"), "unknown field(s) colour"),
        (lambda f: f["nodes"]["b"].update(webhook="ftp://x"), "webhook needs an http(s) url"),
    ],
)
def test_validation_errors_name_the_problem(mutate: Any, message: str) -> None:
    flow = base()
    mutate(flow)
    with pytest.raises(FlowError) as info:
        parse_flow(flow, "test.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("test.yaml")


def test_bad_yaml_is_a_flow_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nodes: [unclosed")
    with pytest.raises(FlowError, match="not valid YAML"):
        load_flow(path)


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(base()))
    flow = load_flow(path)
    assert flow.nodes["c"].gather is not None and flow.nodes["c"].gather.count == 4


def test_yes_and_no_stay_words(tmp_path: Path) -> None:
    path = tmp_path / "yn.yaml"
    path.write_text(
        "start: m\nnodes:\n  m:\n    menu:\n      prompt: p\n      choices:\n"
        "        - {key: '1', words: [yes], goto: yes}\n        - {words: [no], goto: no}\n"
        "  yes: {hangup: yes, barge_in: true}\n  no: {hangup: no}\n"
    )
    flow = load_flow(path)
    assert flow.nodes["yes"].hangup == "yes" and flow.nodes["no"].hangup == "no"
    assert flow.nodes["yes"].barge_in is True
    menu = flow.nodes["m"].menu
    assert menu is not None and menu.choices[1].words == ("no",)
