#!/usr/bin/env bash
# The official MCP conformance suite (npm @modelcontextprotocol/conformance)
# against Cortex.
#
#   scripts/conformance.sh server [--url URL] [--scenario NAME]...
#       Server scenarios against a memory service started here with
#       `cargo run --release -p cortex-cli -- serve memory --port <free> --db <tmp>`
#       (or against URL, an MCP endpoint already running).
#   scripts/conformance.sh kit
#       Every server scenario of the suite against the service kit's fixture
#       server (crates/cortex-service/examples/mcp_fixtures.rs: content-type
#       tools, sampling and elicitation, resumable streams, test://
#       resources, prompts, completion, logging, progress); every one must
#       pass.
#   scripts/conformance.sh client [--scenario NAME]...
#       Client scenarios (default: CLIENT_SCENARIOS below: the core ones and
#       every auth/* one) against the network client, as
#       crates/cortex-client/examples/conformance_client.rs.
#
# Tools go to ./.tools (gitignored): node 22 (npm package `node@22`) and the
# suite, pinned below. Each scenario runs on its own; the script reads the
# suite's "Passed: N/M, F failed, W warnings" line of each and fails unless
# every applicable scenario passed all its checks (N = M > 0). Scenarios
# judged not applicable (see docs/mcp.md) still run, and are reported, but do
# not fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS="$ROOT/.tools"
CONFORMANCE_VERSION="${CONFORMANCE_VERSION:-0.1.16}"

log() { printf '%s\n' "$*" >&2; }
die() { log "conformance: $*"; exit 1; }

install_tools() {
  local bin="$TOOLS/node_modules/.bin"
  local have=""
  if [ -f "$TOOLS/node_modules/@modelcontextprotocol/conformance/package.json" ]; then
    have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' \
      "$TOOLS/node_modules/@modelcontextprotocol/conformance/package.json" | head -1)
  fi
  if [ ! -x "$bin/node" ] || [ ! -x "$bin/conformance" ] || [ "$have" != "$CONFORMANCE_VERSION" ]; then
    command -v npm >/dev/null 2>&1 || die "npm is needed to install node@22 and the suite"
    log "installing node@22 and @modelcontextprotocol/conformance@$CONFORMANCE_VERSION into .tools/"
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error \
      "node@22" "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" >&2
  fi
  export PATH="$bin:$PATH"
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 22 ] || die "node $(node --version) found; the suite needs node >= 22"
}

# Scenario -> why it does not apply to the memory service (docs/mcp.md has
# the full reasons). Everything else must pass.
declare -A NOT_APPLICABLE=(
  [completion-complete]="completes fixture prompt test_prompt_with_arguments; memory has no prompts (the kit's completion: examples/mcp_fixtures.rs)"
  [tools-call-simple-text]="fixture tool test_simple_text of the suite's reference server"
  [tools-call-image]="fixture tool test_image_content; memory tools return JSON"
  [tools-call-audio]="fixture tool test_audio_content; memory tools return JSON"
  [tools-call-embedded-resource]="fixture tool test_embedded_resource"
  [tools-call-mixed-content]="fixture tool test_multiple_content_types"
  [tools-call-with-logging]="fixture tool test_tool_with_logging (the kit's logging: examples/mcp_fixtures.rs)"
  [tools-call-error]="fixture tool test_error_handling (isError itself is tested in tests/mcp_server.rs)"
  [tools-call-with-progress]="fixture tool test_tool_with_progress (the kit's progress: examples/mcp_fixtures.rs)"
  [tools-call-sampling]="fixture tool test_sampling; memory tools ask nothing of the client (the kit's CallContext::sample: examples/mcp_fixtures.rs)"
  [tools-call-elicitation]="fixture tool test_elicitation; memory tools ask nothing of the client (the kit's CallContext::elicit: examples/mcp_fixtures.rs)"
  [elicitation-sep1034-defaults]="fixture tool test_elicitation_sep1034_defaults; memory does not elicit (the kit's elicitation: examples/mcp_fixtures.rs)"
  [elicitation-sep1330-enums]="fixture tool test_elicitation_sep1330_enums; memory does not elicit (the kit's elicitation: examples/mcp_fixtures.rs)"
  [json-schema-2020-12]="fixture tool json_schema_2020_12_tool (schemas are passed through verbatim)"
  [server-sse-polling]="fixture tool test_reconnection, which ends its stream early (the kit's resumable POST streams: examples/mcp_fixtures.rs)"
  [resources-read-text]="fixture resource test://static-text"
  [resources-read-binary]="fixture resource test://static-binary; memory resources are JSON text"
  [resources-templates-read]="fixture template test://template/{id}/data"
  [resources-subscribe]="fixture resource test://watched-resource (unknown here: -32002)"
  [resources-unsubscribe]="subscribes to the fixture test://watched-resource first"
  [prompts-list]="fixture prompts; memory has none (the kit's prompts: examples/mcp_fixtures.rs)"
  [prompts-get-simple]="fixture prompts; memory has none (the kit's prompts: examples/mcp_fixtures.rs)"
  [prompts-get-with-args]="fixture prompts; memory has none (the kit's prompts: examples/mcp_fixtures.rs)"
  [prompts-get-embedded-resource]="fixture prompts; memory has none (the kit's prompts: examples/mcp_fixtures.rs)"
  [prompts-get-with-image]="fixture prompts; memory has none (the kit's prompts: examples/mcp_fixtures.rs)"
)

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

SERVER_PID=""
WORK_DIR=""
cleanup() {
  local status=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ -n "$WORK_DIR" ]; then rm -rf "$WORK_DIR"; fi
  exit "$status"
}
trap cleanup EXIT

start_memory() {
  log "building cortex-cli (release)"
  cargo build --release -q -p cortex-cli >&2
  WORK_DIR=$(mktemp -d)
  local port
  port=$(free_port)
  # --no-auth: the suite's server scenarios carry no token (its auth/*
  # scenarios, which would, are not applicable here).
  cargo run --release -q -p cortex-cli -- serve memory --port "$port" --db "$WORK_DIR/memory.sqlite3" \
    --no-auth >"$WORK_DIR/server.log" 2>&1 &
  SERVER_PID=$!
  local health="http://127.0.0.1:$port/health"
  for _ in $(seq 1 300); do
    if node -e 'fetch(process.argv[1]).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))' "$health" 2>/dev/null; then
      URL="http://127.0.0.1:$port/mcp"
      log "memory service up at $URL"
      return
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK_DIR/server.log" >&2; die "the memory service exited"; }
    sleep 0.2
  done
  cat "$WORK_DIR/server.log" >&2
  die "the memory service did not become healthy"
}

# Judges one scenario by the summary line in its output FILE ("Passed: N/M,
# F failed, W warnings"), not by the runner's exit code: it passes only
# with M > 0, N = M and F = 0. Adds to the caller's passed_total,
# checks_total and failed, and prints one line.
judge() {
  local scenario="$1" file="$2" summary passed=0 total=0 nfailed=0
  summary=$(grep -Eo 'Passed: [0-9]+/[0-9]+, [0-9]+ failed, [0-9]+ warnings' "$file" | tail -1 || true)
  if [[ "$summary" =~ Passed:\ ([0-9]+)/([0-9]+),\ ([0-9]+)\ failed ]]; then
    passed=${BASH_REMATCH[1]}; total=${BASH_REMATCH[2]}; nfailed=${BASH_REMATCH[3]}
  fi
  passed_total=$((passed_total + passed))
  checks_total=$((checks_total + total))
  if [ -z "$summary" ] || [ "$total" -eq 0 ] || [ "$passed" -ne "$total" ] || [ "$nfailed" -ne 0 ]; then
    failed+=("$scenario")
    printf 'FAIL %-30s %s\n' "$scenario" "${summary:-no summary line (see $file)}"
  else
    printf 'pass %-30s %s\n' "$scenario" "$summary"
  fi
}

server() {
  URL=""
  local scenarios=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --url) URL="$2"; shift 2 ;;
      --scenario) scenarios+=("$2"); shift 2 ;;
      *) die "unknown option for server: $1" ;;
    esac
  done
  install_tools
  if [ ${#scenarios[@]} -eq 0 ]; then
    mapfile -t scenarios < <(conformance list --server | sed -n 's/^  - \([^ ]*\).*/\1/p')
  fi
  [ ${#scenarios[@]} -gt 0 ] || die "the suite listed no server scenarios"
  [ -n "$URL" ] || start_memory

  local out="$ROOT/target/conformance/server"
  rm -rf "$out" && mkdir -p "$out"
  local failed=() na_report=() passed_total=0 checks_total=0 applicable=0
  for scenario in "${scenarios[@]}"; do
    local file="$out/$scenario.txt"
    # The suite's exit code is not trusted alone: its summary line is read.
    conformance server --url "$URL" --scenario "$scenario" >"$file" 2>&1 || true
    if [ -n "${NOT_APPLICABLE[$scenario]:-}" ]; then
      local summary
      summary=$(grep -Eo 'Passed: [0-9]+/[0-9]+, [0-9]+ failed, [0-9]+ warnings' "$file" | tail -1 || true)
      na_report+=("$(printf '  %-30s %s  (%s)' "$scenario" "${summary:-no summary}" "${NOT_APPLICABLE[$scenario]}")")
      continue
    fi
    applicable=$((applicable + 1))
    judge "$scenario" "$file"
  done
  if [ ${#na_report[@]} -gt 0 ]; then
    printf '\nnot applicable (run, not counted):\n'
    printf '%s\n' "${na_report[@]}"
  fi
  printf '\nserver conformance: %d applicable scenarios, checks Passed: %d/%d; %d scenario(s) failed; outputs in %s\n' \
    "$applicable" "$passed_total" "$checks_total" "${#failed[@]}" "$out"
  [ "$applicable" -gt 0 ] && [ "$checks_total" -gt 0 ] || die "no applicable scenario ran any check"
  [ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
}

# Client scenarios (`conformance list --client`): every one the suite has,
# the OAuth ones (`auth/*`, docs/mcp.md "OAuth") included.
CLIENT_SCENARIOS=(initialize tools_call sse-retry elicitation-sep1034-client-defaults
  auth/metadata-default auth/metadata-var1 auth/metadata-var2 auth/metadata-var3
  auth/basic-cimd auth/scope-from-www-authenticate auth/scope-from-scopes-supported
  auth/scope-omitted-when-undefined auth/scope-step-up auth/scope-retry-limit
  auth/token-endpoint-auth-basic auth/token-endpoint-auth-post auth/token-endpoint-auth-none
  auth/pre-registration auth/2025-03-26-oauth-metadata-backcompat
  auth/2025-03-26-oauth-endpoint-fallback auth/resource-mismatch auth/offline-access-scope
  auth/offline-access-not-supported auth/client-credentials-jwt auth/client-credentials-basic
  auth/cross-app-access-complete-flow)

client() {
  local scenarios=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --scenario) scenarios+=("$2"); shift 2 ;;
      *) die "unknown option for client: $1" ;;
    esac
  done
  [ ${#scenarios[@]} -gt 0 ] || scenarios=("${CLIENT_SCENARIOS[@]}")
  install_tools
  log "building the conformance client (crates/cortex-client/examples/conformance_client.rs)"
  cargo build -q -p cortex-client --features oauth-jwt --example conformance_client >&2
  local bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/conformance_client"
  [ -x "$bin" ] || die "no conformance client at $bin"

  local out="$ROOT/target/conformance/client"
  rm -rf "$out" && mkdir -p "$out"
  local failed=() passed_total=0 checks_total=0
  for scenario in "${scenarios[@]}"; do
    # `auth/metadata-default` -> `auth_metadata-default.txt`
    local file="$out/${scenario//\//_}.txt"
    # The runner appends the server URL to the command; its exit code is
    # not trusted alone: its summary line is read.
    conformance client --command "$bin" --scenario "$scenario" -o "$out/${scenario//\//_}" >"$file" 2>&1 || true
    judge "$scenario" "$file"
  done
  printf '\nclient conformance: %d scenarios, checks Passed: %d/%d; %d scenario(s) failed; outputs in %s\n' \
    "${#scenarios[@]}" "$passed_total" "$checks_total" "${#failed[@]}" "$out"
  [ "$checks_total" -gt 0 ] || die "no client scenario ran any check"
  [ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
}

# Every server scenario of the suite (`conformance list --server`): the
# kit's fixture server implements all their fixtures, and every one must
# pass.
KIT_SCENARIOS=(server-initialize logging-set-level ping completion-complete
  tools-list tools-call-simple-text tools-call-image tools-call-audio
  tools-call-embedded-resource tools-call-mixed-content tools-call-with-logging
  tools-call-error tools-call-with-progress tools-call-sampling
  tools-call-elicitation json-schema-2020-12 elicitation-sep1034-defaults
  server-sse-polling server-sse-multiple-streams elicitation-sep1330-enums
  resources-list resources-read-text resources-read-binary
  resources-templates-read resources-subscribe resources-unsubscribe
  prompts-list prompts-get-simple prompts-get-with-args
  prompts-get-embedded-resource prompts-get-with-image
  dns-rebinding-protection)

kit() {
  install_tools
  log "building the kit's fixture server (crates/cortex-service/examples/mcp_fixtures.rs)"
  cargo build -q -p cortex-service --example mcp_fixtures >&2
  local bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/mcp_fixtures"
  [ -x "$bin" ] || die "no fixture server at $bin"
  WORK_DIR=$(mktemp -d)
  local port
  port=$(free_port)
  "$bin" "127.0.0.1:$port" >"$WORK_DIR/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    grep -q "MCP fixtures at" "$WORK_DIR/server.log" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK_DIR/server.log" >&2; die "the fixture server exited"; }
    sleep 0.1
  done
  local url="http://127.0.0.1:$port/mcp"
  local out="$ROOT/target/conformance/kit"
  rm -rf "$out" && mkdir -p "$out"
  local failed=() passed_total=0 checks_total=0
  for scenario in "${KIT_SCENARIOS[@]}"; do
    local file="$out/$scenario.txt"
    conformance server --url "$url" --scenario "$scenario" >"$file" 2>&1 || true
    judge "$scenario" "$file"
  done
  printf '\nkit conformance: %d scenarios, checks Passed: %d/%d; %d scenario(s) failed; outputs in %s\n' \
    "${#KIT_SCENARIOS[@]}" "$passed_total" "$checks_total" "${#failed[@]}" "$out"
  [ "$checks_total" -gt 0 ] || die "no kit scenario ran any check"
  [ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
}

case "${1:-}" in
  server) shift; server "$@" ;;
  kit) shift; kit ;;
  client) shift; client "$@" ;;
  *) log "usage: $0 server [--url URL] [--scenario NAME]... | kit | client [--scenario NAME]..."; exit 2 ;;
esac
