"""Sentence-sized lines and the word-level guards (pure logic, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.speech.lines import (
    Word,
    collapse_loops,
    drop_repeated_lines,
    line_text,
    make_lines,
    snap_onsets,
    split_words,
    unsupported_edges,
)
from helpers.speech.stt import PHANTOM_PHRASES, Segment


def _words(text: str, start: float = 0.0, step: float = 0.3, gaps: dict[int, float] | None = None,
           prob: float = 0.9) -> list[Word]:
    """Words of ``text`` one after another, ``step`` s each; ``gaps[i]``: pause before word i."""
    out, t = [], start
    for i, w in enumerate(text.split()):
        t += (gaps or {}).get(i, 0.0)
        out.append(Word(" " + w, t, t + step * 0.8, prob))
        t += step
    return out


def test_splits_at_sentence_ends_with_times_from_words() -> None:
    words = _words("Hello there. How are you today? I am fine! Thanks", gaps={2: 0.4, 6: 0.5})
    lines = make_lines(words, offset=10.0)
    assert [ln.text for ln in lines] == ["Hello there.", "How are you today?", "I am fine!",
                                         "Thanks"]
    assert lines[1].start == 10.0 + words[2].start and lines[1].end == 10.0 + words[5].end
    assert lines[0].start == 10.0 and math.isclose(lines[3].end, 10.0 + words[-1].end)


def test_abbreviation_like_tokens_do_not_need_spaces() -> None:
    # Whisper splits "well-known" into " well" and "-known": one whitespace token, two words.
    words = [Word(" It", 0, 0.2, 1), Word(" is", 0.2, 0.4, 1), Word(" well", 0.4, 0.6, 1),
             Word("-known.", 0.6, 0.9, 1), Word(" Yes.", 1.5, 1.8, 1)]
    assert [line_text(g) for g in split_words(words)] == ["It is well-known.", "Yes."]


def test_long_unpunctuated_run_is_cut_at_the_longest_pause() -> None:
    # 40 words, 0.3 s each (12 s), no punctuation; the real pause is before word 17.
    words = _words(" ".join(f"w{i}" for i in range(40)), gaps={17: 0.6, 30: 0.2})
    groups = split_words(words, max_s=8.0, max_words=30)
    assert len(groups[0]) == 17  # the cut falls at the pause, not at a fixed count
    assert all(g[-1].end - g[0].start <= 8.0 and len(g) <= 30 for g in groups)
    assert [w for g in groups for w in g] == words  # nothing lost, order kept


def test_word_cap_and_comma_preference() -> None:
    # Evenly spaced: the comma wins over the other equal pauses.
    words = _words("one two three four five six seven, eight nine ten eleven twelve thirteen")
    groups = split_words(words, max_s=100.0, max_words=10)
    assert line_text(groups[0]) == "one two three four five six seven,"
    assert all(len(g) <= 10 for g in groups)


def test_short_sentence_kept_whole_and_confidence_is_geometric_mean() -> None:
    words = [Word(" Yes", 0, 0.3, 0.81), Word(" please.", 0.3, 0.7, 0.25)]
    (line,) = make_lines(words)
    assert line.text == "Yes please." and math.isclose(line.confidence, 0.45)


def test_clamp_keeps_lines_inside_the_utterance() -> None:
    words = _words("Hello there.", start=0.0)
    (line,) = make_lines(words, offset=4.0, clamp=(4.2, 4.5))
    assert line.start == 4.2 and line.end == 4.5


def test_segment_lines_split_and_fall_back() -> None:
    words = tuple(_words("First one here. Second one here.", start=2.0))
    seg = Segment("c", 2.0, 4.0, "First one here. Second one here.", 0.8, 120.0, 7, words)
    lines = seg.lines()
    assert [s.text for s in lines] == ["First one here.", "Second one here."]
    assert lines[1].start == words[3].start and all(s.latency_ms == 120.0 for s in lines)
    bare = Segment("c", 2.0, 4.0, "no words", 0.8, 120.0, 7)
    assert bare.lines() == [bare]


def test_collapse_loops() -> None:
    def run(text: str) -> str:
        kept, _ = collapse_loops(_words(text))
        return line_text(kept)

    # At the end: the decode was cut off in a loop.
    assert run("I want to order. Thank you. Thank you.") == "I want to order. Thank you."
    assert run("Yes, please. Yes, please. Yes,") == "Yes, please."
    # Inside: three copies of a phrase, or a long phrase twice.
    assert run("Okay goodbye okay goodbye okay goodbye then") == "Okay goodbye then"
    assert run("I need a new card I need a new card today") == "I need a new card today"
    # Speech: a short repeat inside a result stays.
    for text in ("no no no I said", "it was very very good", "Hello? Hello? Is anyone there",
                 "I said no no."):
        assert run(text) == text
    assert collapse_loops(_words("a b a b a b"))[1] == 4


def test_drop_repeated_lines() -> None:
    groups = split_words(_words("Thank you. Thank you. Hello? Hello? Thank you."))
    kept, dropped = drop_repeated_lines(groups)
    assert [line_text(g) for g in kept] == ["Thank you.", "Hello?", "Hello?", "Thank you."]
    assert dropped == 1


def test_unsupported_edges_use_the_audio_level() -> None:
    words = _words("I would like to change my address. Thank you.")
    levels = {"speech": -20.0, "tail": -20.0}

    def level(start: float, end: float) -> float:
        return levels["tail"] if start >= words[-2].start else levels["speech"]

    def run() -> tuple[str, int]:
        kept, cut = unsupported_edges(words, PHANTOM_PHRASES, level, floor_dbfs=-45.0,
                                      below_speech_db=20.0)
        return line_text(kept), cut

    assert run() == ("I would like to change my address. Thank you.", 0)  # said clearly
    levels["tail"] = -44.0  # 24 dB under the speech: not the caller
    assert run() == ("I would like to change my address.", 2)
    levels.update(speech=-60.0, tail=-50.0)  # a quiet caller, but the tail is below the floor
    assert run()[1] == 2
    alone = [Word(" Thank", 0, 0.3, 1), Word(" you.", 0.3, 0.6, 1)]
    assert unsupported_edges(alone, PHANTOM_PHRASES, lambda a, b: -90.0, floor_dbfs=-45.0,
                             below_speech_db=20.0) == (alone, 0)  # the whole-result guard's
    # Only a clause of its own: the "you" of "can I ask you" is never an edge.
    ask = _words("Can I ask you")
    assert unsupported_edges(ask, PHANTOM_PHRASES, lambda a, b: -90.0 if a >= ask[-1].start
                             else -20.0, floor_dbfs=-45.0, below_speech_db=20.0)[1] == 0


def test_snap_onsets_moves_a_start_off_the_silence_before_it() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    speech = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    hiss = 1e-4 * np.random.default_rng(1).standard_normal(rate)
    audio = np.concatenate([speech, hiss, speech]).astype(np.float32)  # 1 s pause at 1-2 s
    words = [Word(" one", 0.0, 0.9, 0.9), Word(" two.", 1.2, 2.8, 0.9),  # starts in the pause
             Word(" Three", 2.3, 2.9, 0.9)]  # already on speech: kept
    snapped = snap_onsets(words, audio, rate)
    assert snapped[0] == words[0] and snapped[2] == words[2]
    assert snapped[1].start == pytest.approx(2.0, abs=0.02)
    assert snapped[1].end == words[1].end
    # A word aligned over the tail of the sentence before (a VAD cut) starts after the pause.
    tail = [Word(" The", 0.7, 2.5, 0.9)]
    assert snap_onsets(tail, audio, rate)[0].start == pytest.approx(2.0, abs=0.02)
    # A word with no loud audio in it keeps its times (nothing better to go on).
    quiet = [Word(" hm", 1.1, 1.6, 0.5)]
    assert snap_onsets(quiet, audio, rate) == quiet


def test_a_repeat_of_the_start_past_the_speech_end_is_not_a_line() -> None:
    """Whisper sometimes says the utterance's start again in the padding after it; those
    words lie past the speech's end. A real last sentence there is kept (it says something
    new), and so is a repeat inside the speech ("Hello? Hello?" is speech)."""
    from helpers.speech.lines import Word, make_lines

    def w(text: str, start: float) -> Word:
        return Word(" " + text, start, start + 0.2, 0.9)  # as Whisper spells words

    said = [w("I", 0.1), w("would", 0.3), w("like", 0.5), w("it.", 0.7)]
    ghost = [w("I", 2.0), w("would", 2.2)]
    lines = make_lines(said + ghost, clamp=(0.0, 1.5))
    assert [ln.text for ln in lines] == ["I would like it."]
    new = [w("Thanks.", 2.0)]
    assert [ln.text for ln in make_lines(said + new, clamp=(0.0, 1.5))] == [
        "I would like it.", "Thanks."]
    inside = [w("Hello?", 0.1), w("Hello?", 0.6)]
    assert len(make_lines(inside, clamp=(0.0, 1.5))) >= 1
