#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Third-party MCP servers for the interop tests (npm and PyPI, into .tools/).
./scripts/install-interop.sh
cargo test --workspace --locked "$@"
