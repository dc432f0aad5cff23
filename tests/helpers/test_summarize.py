"""Summarisers: the real transformers load -> generate path on a tiny random-weight T5, the
extractive fallback, and how load_summarizer chooses between them."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from helpers import summarize
from helpers.summarize import (
    ExtractiveSummarizer,
    Summarizer,
    Summary,
    T5Summarizer,
    cap_title,
    fetch_model,
    load_summarizer,
)

try:
    from tests.helpers.tiny_t5 import build_tiny_t5
except ImportError:  # pragma: no cover - run from inside tests/helpers
    from tiny_t5 import build_tiny_t5  # type: ignore[no-redef]

CALL = """Agent: Thank you for calling, this is Anna, how can I help you today?
Caller: Hi. I was charged twice for my internet invoice this month.
Caller: The duplicate charge on the invoice is forty dollars and I want a refund of the charge.
Agent: I see the duplicate charge on your invoice. I will submit a refund for the charge now.
Agent: The refund should arrive within five business days.
Caller: Great, thanks. Also my router restarts sometimes.
Agent: Okay. Is there anything else?
Caller: No, that's all. Bye."""


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("ckpt") / "tiny-flan")


@pytest.fixture(scope="module")
def t5(tiny_ckpt: Path) -> T5Summarizer:
    return T5Summarizer(tiny_ckpt, threads=1)


def check_contract(s: Summary) -> None:
    assert isinstance(s, Summary)
    assert 0 < len(s.title) <= 50
    assert s.text.strip()
    assert s.title == s.title.strip() and s.text == s.text.strip()


# --------------------------------------------------------------------------- T5 path


def test_t5_contract(t5: T5Summarizer, tiny_ckpt: Path) -> None:
    before = t5.generate_calls
    s = t5.summarize(CALL, ivr_path=["main", "billing"])
    check_contract(s)
    assert s.method == "flan-t5"
    assert s.model == "tiny-flan"
    assert t5.generate_calls - before == 2  # one for the text, one for the title
    assert len(summarize.split_sentences(s.text)) <= 3
    assert isinstance(t5, Summarizer)


def test_t5_chunks_long_transcripts(tiny_ckpt: Path) -> None:
    t5 = T5Summarizer(tiny_ckpt, max_input_tokens=64, threads=1)
    t5.summary_tokens = 8  # keep the random model's outputs short: this test counts calls
    t5.title_tokens = 6
    budget = 64 - t5._count("Summarize this phone call: ") - 2
    long_call = " ".join(
        f"Sentence {i} says the refund for invoice {i} was not processed." for i in range(40)
    )
    chunks = t5._chunks(long_call, budget)
    assert len(chunks) > 3
    assert all(t5._count(c) <= budget for c in chunks)
    s = t5.summarize(long_call)
    check_contract(s)
    # map (one per chunk) + reduce (at least one) + title
    assert t5.generate_calls >= len(chunks) + 2


def test_t5_empty_transcript_skips_the_model(t5: T5Summarizer) -> None:
    before = t5.generate_calls
    s = t5.summarize("   \n ")
    check_contract(s)
    assert t5.generate_calls == before


def test_t5_oversized_sentence_is_split(t5: T5Summarizer) -> None:
    words = " ".join(["refund"] * 2000)  # one "sentence" with no punctuation at all
    chunks = t5._chunks(words, 100)
    assert len(chunks) > 1 and all(t5._count(c) <= 100 for c in chunks)


# --------------------------------------------------------------------------- extractive


def test_extractive_contract_and_key_sentence() -> None:
    s = ExtractiveSummarizer().summarize(CALL)
    check_contract(s)
    assert s.method == "extractive" and s.model is None
    assert "duplicate charge on the invoice" in s.text
    assert "router" not in s.text
    assert "Bye" not in s.text
    low = s.title.lower()
    assert "charge" in low or "invoice" in low or "refund" in low


def test_extractive_is_deterministic() -> None:
    a = ExtractiveSummarizer().summarize(CALL, ["main", "billing"])
    b = ExtractiveSummarizer().summarize(CALL, ["main", "billing"])
    assert a == b


def test_extractive_edge_cases() -> None:
    e = ExtractiveSummarizer()
    check_contract(e.summarize(""))
    check_contract(e.summarize("Okay. Yes. Bye.", ["billing_menu"]))
    assert e.summarize("Okay. Yes. Bye.", ["billing_menu"]).title == "Billing menu"
    unpunctuated = " ".join(["the parcel delivery to my new address was late again"] * 20)
    s = e.summarize(unpunctuated)
    check_contract(s)
    assert len(s.text.split()) <= 3 * 25


def test_cap_title() -> None:
    long = "Customer requests a refund for a duplicated internet invoice charge in March"
    t = cap_title(long)
    assert len(t) <= 50 and long.startswith(t) and not t.endswith(" ")
    assert cap_title('Title: "refund request."') == "Refund request"
    assert len(cap_title("x" * 80)) == 50


# --------------------------------------------------------------------------- loading


def test_load_none_falls_back_and_logs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(summarize, "_fallback_logged", False)
    with capture_logs() as logs:
        a = load_summarizer(None)
        b = load_summarizer("no-such-org/no-such-model", search_dirs=[])
        c = load_summarizer(Path("/nonexistent/flan"))
    assert all(isinstance(x, ExtractiveSummarizer) for x in (a, b, c))
    events = [e for e in logs
              if e["event"] == "no Flan-T5 checkpoint installed; using extractive summaries"]
    assert len(events) == 1


def test_load_local_dir(tiny_ckpt: Path) -> None:
    s = load_summarizer(tiny_ckpt, threads=1)
    assert isinstance(s, T5Summarizer) and s.model_name == "tiny-flan"


def test_load_hub_name_from_models_dir(tiny_ckpt: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "flan-t5-small").symlink_to(tiny_ckpt, target_is_directory=True)
    s = load_summarizer("google/flan-t5-small", search_dirs=[models], threads=1)
    assert isinstance(s, T5Summarizer)
    out = s.summarize(CALL)
    assert out.method == "flan-t5" and out.model == "google/flan-t5-small"


def test_fetch_model_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(**_kw: object) -> str:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(RuntimeError, match="may be offline"):
        fetch_model("google/flan-t5-small", tmp_path / "models")
