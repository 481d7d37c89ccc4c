#!/usr/bin/env bash
# Installs the system packages the build and the tests need, when missing:
#   protoc (building the `etcd` feature's etcd client; the default build
#   needs none), etcd (discovery tests run a real etcd), tinyproxy (the
#   client's proxy tests run a real HTTP proxy), chromium and chromedriver
#   (core's console test drives the page in headless Chromium).
# Debian/Ubuntu only; run as root or with sudo available.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${need[*]} (install them with your package manager)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's etcd-server and tinyproxy packages start system services on
# their default ports; the tests start their own on free ports, so stop
# them if they run.
if command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl stop etcd >/dev/null 2>&1 || true
  $sudo systemctl stop tinyproxy >/dev/null 2>&1 || true
fi
