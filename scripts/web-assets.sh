#!/usr/bin/env bash
# Vendors the upload validator's browser assets into web/static/vendor/ (gitignored):
#   ort/  ONNX Runtime Web, the plain WASM build (ES module + its WASM glue and binary)
#   vad/  the Silero VAD v5 ONNX model that @ricky0123/vad-web ships
#   transformers/  transformers.js (bundled ESM build, which embeds its own ONNX Runtime Web
#         JS) and the ORT WASM build it loads, for the optional browser Whisper (the model
#         itself is not on npm: `audiosocket models build-web` writes web/static/models/)
# from the npm packages pinned in package.json / package-lock.json. Without npm it says so
# and exits 0: the portal then runs its non-ML checks and shows the VAD check as off.
set -uo pipefail
cd "$(dirname "$0")/.."
dest=web/static/vendor
if ! command -v npm >/dev/null 2>&1; then
    echo "web-assets: npm not found; the upload validator's Silero VAD check will be off" >&2
    exit 0
fi
ort=node_modules/onnxruntime-web/dist
vad=node_modules/@ricky0123/vad-web/dist
tjs=node_modules/@huggingface/transformers
# transformers.js pins its own (newer) onnxruntime-web; npm nests it when it differs from ours.
tort=$tjs/node_modules/onnxruntime-web/dist
[ -d "$tort" ] || tort=$ort
if [ ! -f "$ort/ort.wasm.min.mjs" ] || [ ! -f "$vad/silero_vad_v5.onnx" ] \
    || [ ! -f "$tjs/dist/transformers.min.js" ]; then
    # --ignore-scripts: nothing we copy needs an install script (and none may download);
    # ONNXRUNTIME_NODE_INSTALL=skip says the same to onnxruntime-node (a transformers.js
    # dependency for Node that the browser never uses) should scripts ever run.
    export ONNXRUNTIME_NODE_INSTALL=skip
    if [ -f package-lock.json ]; then cmd=(npm ci); else cmd=(npm install); fi
    if ! "${cmd[@]}" --ignore-scripts --no-audit --no-fund --loglevel=error >&2; then
        echo "web-assets: ${cmd[*]} failed; the Silero VAD check will be off" >&2
        exit 0
    fi
fi
mkdir -p "$dest/ort" "$dest/vad"
cp -f "$ort/ort.wasm.min.mjs" "$ort/ort-wasm-simd-threaded.mjs" "$ort/ort-wasm-simd-threaded.wasm" "$dest/ort/"
cp -f node_modules/onnxruntime-web/LICENSE "$dest/ort/LICENSE.txt" 2>/dev/null || true
cp -f "$vad/silero_vad_v5.onnx" "$dest/vad/"
cp -f node_modules/@ricky0123/vad-web/LICENSE* "$dest/vad/LICENSE.txt" 2>/dev/null || true
[ -d "$tjs/node_modules/onnxruntime-web/dist" ] && tort=$tjs/node_modules/onnxruntime-web/dist
if [ -f "$tjs/dist/transformers.min.js" ] && [ -f "$tort/ort-wasm-simd-threaded.asyncify.wasm" ]; then
    # The bundled build (not transformers.web.min.js, which imports "onnxruntime-web" by bare
    # name: workers have no import maps). It loads the asyncify WASM build by default.
    mkdir -p "$dest/transformers"
    cp -f "$tjs/dist/transformers.min.js" "$tort/ort-wasm-simd-threaded.asyncify.mjs" \
        "$tort/ort-wasm-simd-threaded.asyncify.wasm" "$dest/transformers/"
    cp -f "$tjs/LICENSE" "$dest/transformers/LICENSE.txt" 2>/dev/null || true
else
    echo "web-assets: transformers.js not installed; the browser Whisper check will be off" >&2
fi
echo "web-assets: vendored ONNX Runtime Web $(node -p 'require("./node_modules/onnxruntime-web/package.json").version' 2>/dev/null), Silero VAD v5 and transformers.js $(node -p 'require("./'"$tjs"'/package.json").version' 2>/dev/null) into $dest" >&2
