#!/usr/bin/env bash
# Compiles the TypeScript sources to dist/ and marks the bins executable.
set -euo pipefail
cd "$(dirname "$0")/.."
# No `rm -rf dist`: tests of other files may be running from it. CI builds from a clean clone.
npx tsc -p tsconfig.build.json
chmod +x dist/cli/hyphae.js dist/proxy/main.js dist/allocator/main.js
