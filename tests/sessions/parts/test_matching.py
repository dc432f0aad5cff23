"""Spoken choices are matched tolerantly but not loosely."""

from __future__ import annotations

import pytest

from sessions.parts.flow import Choice
from sessions.parts.matching import match_choice

CHOICES = (
    Choice(goto="sales", key="1", words=("sales",)),
    Choice(goto="support", key="2", words=("support", "help")),
    Choice(goto="message", key="3", words=("leave a message",)),
)


@pytest.mark.parametrize(
    ("said", "goto"),
    [
        ("sales", "sales"),
        ("Sales.", "sales"),
        ("sales please", "sales"),
        ("I want sales", "sales"),
        ("Sails.", "sales"),
        ("Support!", "support"),
        ("I need some help", "support"),
        ("I'd like to leave a message", "message"),
        ("two", "support"),
        ("Press 1.", "sales"),
        ("three", "message"),
    ],
)
def test_matches(said: str, goto: str) -> None:
    choice = match_choice(said, CHOICES)
    assert choice is not None and choice.goto == goto


@pytest.mark.parametrize(
    "said",
    ["", "what?", "the weather is nice today", "sales or support", "I have two questions"],
)
def test_no_match(said: str) -> None:
    assert match_choice(said, CHOICES) is None
