"""Which summariser serves a process, and the Flan-T5 models behind it.

:func:`load_summarizer` looks for a checkpoint (a name, a path, or the ``models`` folders of
the data directory and the repository), prefers its CTranslate2 conversion, and falls back
to the extractive summariser when nothing loads (logged once). :func:`convert_checkpoint`
and :func:`fetch_model` back ``audiosocket models convert`` / ``fetch``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from helpers.ai import AiSlots, ModelCache
from helpers.postcall.flan_t5 import (
    CT2_SUFFIX,
    Ct2Summarizer,
    Seq2SeqSummarizer,
    T5Summarizer,
    is_ct2,
)
from helpers.postcall.summarize import ExtractiveSummarizer, Summarizer

__all__ = ["CT2_SUFFIX", "convert_checkpoint", "fetch_model", "load_summarizer"]

log = structlog.get_logger("helpers.postcall.summarize")

_REPO_ROOT = Path(__file__).resolve().parents[2]

#: Tokenizer files copied next to a converted model so it loads on its own. ``config.json``
#: is deliberately absent: the converter writes CTranslate2's own config under that name.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
    "added_tokens.json", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
)



def _log_fallback_once(reason: str, checkpoint: str | None, seen: ModelCache) -> None:
    if not seen.first_time(("summary fallback",)):
        return
    log.warning("no Flan-T5 checkpoint installed; using extractive summaries",
                reason=reason, checkpoint=checkpoint)


def _log_choice_once(backend: str, summarizer: Seq2SeqSummarizer, seen: ModelCache) -> None:
    """One info line per process and model: which backend serves summaries, from where."""
    if not seen.first_time(("summary backend", backend, summarizer.checkpoint)):
        return
    log.info("summary backend chosen", backend=backend, model=summarizer.model_name,
             path=summarizer.checkpoint)


def _default_search_dirs() -> list[Path]:
    dirs = [_REPO_ROOT / "models"]
    data_dir = os.environ.get("AUDIOSOCKET_DATA_DIR")
    if data_dir:
        dirs.insert(0, Path(data_dir) / "models")
    return dirs


def _is_checkpoint(path: Path) -> bool:
    """A transformers checkpoint: ``config.json`` and not a CTranslate2 dir."""
    return (path / "config.json").is_file() and not is_ct2(path)


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "spiece.model"))


def _ct2_sibling(path: Path) -> Path | None:
    p = path.absolute()  # not resolve(): the sibling sits next to the configured name
    return p.with_name(p.name + CT2_SUFFIX) if p.name else None


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else is meant as a filesystem path."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
            or Path(name).is_absolute())


@dataclass(frozen=True)
class _Candidate:
    backend: str  # "ctranslate2" or "torch"
    path: Path
    label: str | None  # the name summaries report; None: the directory's name
    tokenizer_dir: Path | None = None


def _candidates_at(path: Path, label: str | None) -> list[_Candidate]:
    """What can serve ``path``: itself if it is a CTranslate2 dir; else its ``-ct2``
    sibling (if converted) and then itself as a transformers checkpoint."""
    if is_ct2(path):
        return [_Candidate("ctranslate2", path, label)]
    out: list[_Candidate] = []
    sibling = _ct2_sibling(path)
    if sibling is not None and is_ct2(sibling):
        # A sibling converted by hand may lack the tokenizer: read it from the source.
        tok = path if not _has_tokenizer(sibling) and _has_tokenizer(path) else None
        out.append(_Candidate("ctranslate2", sibling, label or path.absolute().name, tok))
    if _is_checkpoint(path):
        out.append(_Candidate("torch", path, label))
    return out


def _find_candidates(name: str, as_path: bool,
                     search_dirs: Sequence[Path] | None) -> list[_Candidate]:
    """Every local directory that can serve ``name``, CTranslate2 ones first."""
    found: list[_Candidate] = []
    if as_path:
        found += _candidates_at(Path(name).expanduser(), None)
    else:
        base = name.rsplit("/", 1)[-1]
        for d in search_dirs if search_dirs is not None else _default_search_dirs():
            for sub in (d / name, d / name.replace("/", "--"), d / base):
                found += _candidates_at(sub, name)
        found += _candidates_at(Path(name), None)  # a relative dir that looks like a hub id
    unique: dict[tuple[str, Path], _Candidate] = {}
    for c in found:
        unique.setdefault((c.backend, c.path.absolute()), c)
    # Stable sort: CTranslate2 wins wherever it is; search-dir order breaks ties.
    return sorted(unique.values(), key=lambda c: c.backend != "ctranslate2")


def load_summarizer(
    checkpoint: str | Path | None,
    *,
    search_dirs: Sequence[Path] | None = None,
    threads: int | None = None,
    ai: AiSlots | None = None,
    models: ModelCache | None = None,
) -> Summarizer:
    """The best summariser available offline for ``checkpoint``.

    Where it looks:

    * an existing directory: loaded as is (a CTranslate2 dir, i.e. one with ``model.bin``, or
      a transformers checkpoint with ``config.json``);
    * a hub name (``google/flan-t5-small``): first looked for under the ``models/`` dirs
      (``$AUDIOSOCKET_DATA_DIR/models``, then the repo's ``models/``) as ``models/<org>/<name>``,
      ``models/<org>--<name>`` or ``models/<name>``; then in the Hugging Face cache with
      ``local_files_only=True`` (these machines cannot download).

    Which backend: a CTranslate2 model is preferred, either the directory itself or the
    ``<dir>-ct2`` sibling written by ``audiosocket models convert`` (:class:`Ct2Summarizer`,
    several times faster on CPU); else transformers + torch (:class:`T5Summarizer`). The
    choice is logged once ("summary backend chosen").

    ``None``, a missing path, or a name found nowhere (or that fails to load) gives an
    :class:`ExtractiveSummarizer`, after logging "no Flan-T5 checkpoint installed; using
    extractive summaries" once per process.

    The server passes the process's AI slots (``ai``) and model cache (``models``, which
    also remembers what was logged); None gives each call its own (a script, a test).
    """
    seen = models if models is not None else ModelCache()
    if checkpoint is None:
        _log_fallback_once("no checkpoint configured", None, seen)
        return ExtractiveSummarizer()
    name = str(checkpoint)
    as_path = isinstance(checkpoint, Path) or _looks_like_path(name)
    for c in _find_candidates(name, as_path, search_dirs):
        loaded: Seq2SeqSummarizer
        try:
            if c.backend == "ctranslate2":
                loaded = Ct2Summarizer(c.path, tokenizer_dir=c.tokenizer_dir, threads=threads,
                                       name=c.label, ai=ai)
            else:
                loaded = T5Summarizer(c.path, threads=threads, name=c.label, ai=ai)
            loaded.warm_up()  # also proves the model runs before we commit to it
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            # RuntimeError: CTranslate2's "unsupported model"; ImportError: no transformers.
            log.warning("could not load summariser checkpoint", path=str(c.path),
                        backend=c.backend, error=str(exc))
            continue
        _log_choice_once(c.backend, loaded, seen)
        return loaded
    if not as_path:
        try:
            loaded = T5Summarizer(name, threads=threads, local_files_only=True, ai=ai)
            loaded.warm_up()
        except (OSError, ValueError, RuntimeError, ImportError):
            pass  # not in the local Hugging Face cache either
        else:
            _log_choice_once("torch", loaded, seen)
            return loaded
    _log_fallback_once("checkpoint not found locally", name, seen)
    return ExtractiveSummarizer()


# --------------------------------------------------------------------------- models


def convert_checkpoint(
    src: str | Path,
    dst: str | Path | None = None,
    quantization: str = "int8",
    *,
    search_dirs: Sequence[Path] | None = None,
) -> Path:
    """Convert a transformers checkpoint to CTranslate2 in ``dst``; return ``dst``.

    ``src`` is a checkpoint directory or a hub name installed under a ``models/`` dir (as
    :func:`load_summarizer` finds it). ``dst`` defaults to ``<src>-ct2``, the sibling that
    :func:`load_summarizer` prefers. The tokenizer files are copied next to the converted
    weights so the directory is self-contained. Works offline (needs torch + transformers at
    conversion time only). Raises ``RuntimeError`` with a readable message on failure.
    """
    name = str(src)
    as_path = isinstance(src, Path) or _looks_like_path(name)
    sources = [c.path for c in _find_candidates(name, as_path, search_dirs)
               if c.backend == "torch"]
    if not sources:
        raise RuntimeError(f"no transformers checkpoint (a directory with config.json and no "
                           f"model.bin) found for {name!r}")
    src_path = sources[0]
    if dst is None:
        sibling = _ct2_sibling(src_path)
        if sibling is None:
            raise RuntimeError(f"cannot derive an output directory from {src_path}; pass one")
        dst_path = sibling
    else:
        dst_path = Path(dst).expanduser()
    # The converter's force=True deletes dst first: never let that hit the source or an
    # unrelated non-empty directory (e.g. `--dest models`).
    if dst_path.absolute() == src_path.absolute():
        raise RuntimeError("the output directory must differ from the checkpoint")
    if dst_path.is_dir() and any(dst_path.iterdir()) and not is_ct2(dst_path):
        raise RuntimeError(f"{dst_path} exists and is not a CTranslate2 model; refusing to "
                           f"overwrite it")
    from ctranslate2.converters import TransformersConverter

    try:
        TransformersConverter(str(src_path)).convert(
            str(dst_path), quantization=quantization, force=True
        )
    except Exception as exc:  # the converter raises ValueError, OSError, RuntimeError...
        raise RuntimeError(f"could not convert {src_path} to CTranslate2 "
                           f"({type(exc).__name__}: {exc})") from exc
    for fname in _TOKENIZER_FILES:
        if (src_path / fname).is_file():
            shutil.copy2(src_path / fname, dst_path / fname)
    return dst_path


def fetch_model(name: str, dest: Path) -> Path:
    """Download a hub checkpoint (e.g. ``google/flan-t5-small``) to ``dest/<name>``.

    For machines with internet access; ``load_summarizer(name)`` then finds it when ``dest``
    is a searched ``models/`` dir. Only the files inference needs are fetched (safetensors
    weights, config, tokenizer), not the TF/Flax duplicates. Raises ``RuntimeError`` with a
    clear message when the hub cannot be reached.
    """
    from huggingface_hub import snapshot_download

    target = Path(dest) / name.rsplit("/", 1)[-1]
    target.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(
            repo_id=name,
            local_dir=str(target),
            allow_patterns=["*.json", "*.safetensors", "spiece.model", "*.txt"],
        )
    except Exception as exc:  # the hub raises many types: offline, 404, auth, HTTP errors
        raise RuntimeError(
            f"could not download {name!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{exc}). This machine may be offline: copy the checkpoint directory into "
            f"{target} by other means, or set the summary model to a local path."
        ) from exc
    if not _is_checkpoint(target):
        raise RuntimeError(f"{name!r} downloaded to {target} but has no config.json")
    return target
