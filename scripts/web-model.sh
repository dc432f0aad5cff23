#!/usr/bin/env bash
# Builds the browser Whisper (transformers.js layout) from the bundled CTranslate2 tiny.en,
# offline, into web/static/models/. The ONNX export runs in its own venv (.venv-webexport):
# optimum-onnx 0.1 pins transformers 4.x while the server runs transformers 5. torch is
# pinned to the CPU wheel (a bare `torch` pulls a several-GB CUDA build).
# Exits 0 without a model when something is missing; the page then skips the Whisper check.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f web/static/models/whisper-tiny.en/onnx/decoder_model_merged.onnx ]; then
    exit 0
fi
if [ ! -x .venv-webexport/bin/python ]; then
    python3 -m venv .venv-webexport || { echo "web-model: no venv" >&2; exit 0; }
fi
if ! .venv-webexport/bin/python -c "import optimum.exporters.onnx, onnx, onnxruntime, accelerate" 2>/dev/null; then
    .venv-webexport/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1
    if ! .venv-webexport/bin/python -m pip install --quiet "torch==2.13.0" "optimum-onnx==0.1.0" onnxruntime \
            onnx accelerate >&2; then
        echo "web-model: could not install the export tools; browser Whisper is off" >&2
        exit 0
    fi
fi
if ! .venv/bin/audiosocket models build-web --export-python .venv-webexport/bin/python >&2; then
    echo "web-model: build failed; browser Whisper is off" >&2
fi
exit 0
