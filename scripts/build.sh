#!/usr/bin/env bash
# Compiles the TypeScript sources to dist/ and marks the bins executable.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist
npx tsc -p tsconfig.build.json
chmod +x dist/shared/cli/hyphae.js dist/proxy/main.js dist/allocator/main.js
