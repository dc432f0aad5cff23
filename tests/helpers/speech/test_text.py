"""helpers.speech.text: the one sentence splitter and the one word normaliser."""

from __future__ import annotations

from helpers.speech.text import normalise, sentence_ends, split_sentences, words


def test_sentence_ends_skip_abbreviations_and_decimals() -> None:
    text = "Dr. Smith paid 3.5 dollars. Then he left! OK"
    assert [text[:e] for e in sentence_ends(text)] == [
        "Dr. Smith paid 3.5 dollars.", "Dr. Smith paid 3.5 dollars. Then he left!"]


def test_split_options_for_speaking_and_for_summaries() -> None:
    long = "one, " * 50 + "end."
    assert max(len(s) for s in split_sentences(long, max_chars=60)) <= 60
    run = " ".join(["word"] * 60)
    assert [len(s.split()) for s in split_sentences(run, max_words=25)] == [25, 25, 10]
    assert split_sentences("Hi.\n... \nBye") == ["Hi.", "Bye"]


def test_words_split_on_anything_but_letters_digits_apostrophes() -> None:
    assert words("Well-known, don't_stop: 42!") == ["well", "known", "don't", "stop", "42"]
    assert normalise("  Thank you.  ") == "thank you"
