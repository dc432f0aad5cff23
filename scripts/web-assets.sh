#!/usr/bin/env bash
# Vendors the upload validator's browser assets into web/static/vendor/ (gitignored):
#   ort/  ONNX Runtime Web, the plain WASM build (ES module + its WASM glue and binary)
#   vad/  the Silero VAD v5 ONNX model that @ricky0123/vad-web ships
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
if [ ! -f "$ort/ort.wasm.min.mjs" ] || [ ! -f "$vad/silero_vad_v5.onnx" ]; then
    # --ignore-scripts: nothing we copy needs an install script (and none may download).
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
echo "web-assets: vendored ONNX Runtime Web $(node -p 'require("./node_modules/onnxruntime-web/package.json").version' 2>/dev/null) and Silero VAD v5 into $dest" >&2
