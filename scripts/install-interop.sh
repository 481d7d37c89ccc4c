#!/usr/bin/env bash
# Installs the third-party MCP servers that the client's interop tests
# (crates/cortex-client/tests/mcp_interop.rs) start, into .tools/ (gitignored):
#   - npm @modelcontextprotocol/server-everything  -> .tools/interop/
#   - PyPI mcp (the Python SDK, for a FastMCP server) -> .tools/venv/
# Idempotent: what is already there at the pinned version is kept.
# Needs node + npm and python3 (with venv) on PATH; reaches only npm and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

EVERYTHING_VERSION="2026.8.31"
PY_MCP_VERSION="2.3.0"

tools="$PWD/.tools"
mkdir -p "$tools/interop"

everything="$tools/interop/node_modules/@modelcontextprotocol/server-everything/package.json"
if [ -f "$everything" ] && grep -q "\"version\": \"$EVERYTHING_VERSION\"" "$everything"; then
  echo "server-everything $EVERYTHING_VERSION: present"
else
  echo "installing @modelcontextprotocol/server-everything@$EVERYTHING_VERSION into .tools/interop"
  npm install --prefix "$tools/interop" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
fi

venv="$tools/venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c \
  "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$PY_MCP_VERSION')" 2>/dev/null; then
  echo "python mcp $PY_MCP_VERSION: present"
else
  echo "installing PyPI mcp==$PY_MCP_VERSION into .tools/venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$PY_MCP_VERSION"
fi
