#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Third-party MCP servers for the interop tests (npm and PyPI, into .tools/).
./scripts/install-interop.sh
# --all-features: etcd discovery too (it needs protoc, installed above).
cargo test --workspace --all-features --locked "$@"
