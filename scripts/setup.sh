#!/usr/bin/env bash
# Sets up everything Hangar needs on a Debian/Ubuntu machine, idempotently:
#   - system packages (python3-venv, PostgreSQL, skopeo, the reference docker-registry, wrk, hey, openssl,
#     Chromium and its driver for the web site's browser tests)
#     when they are missing, with apt-get (as root, or through sudo);
#   - a virtual environment in .venv with Hangar installed (editable) and its test/dev extras.
#     llama-cpp-python compiles from source the first time (about 5 minutes on 2 cores). The build is
#     portable CPU code (GGML_NATIVE=OFF) unless CMAKE_ARGS says otherwise, e.g. for an NVIDIA GPU:
#       CMAKE_ARGS="-DGGML_CUDA=on" scripts/setup.sh
# Usage: scripts/setup.sh            (called by scripts/demo.sh and scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v skopeo >/dev/null || need+=(skopeo)
command -v docker-registry >/dev/null || need+=(docker-registry)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null || need+=(wrk)
command -v hey >/dev/null || need+=(hey)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)  # bench/pull_push.py: the native verified-file figure
command -v gcc >/dev/null || need+=(build-essential)
command -v cmake >/dev/null || need+=(cmake)
# The S3 storage tests run against a real OpenStack Swift (its s3api) with memcached (tests/swift.py).
command -v swift-proxy-server >/dev/null || need+=(swift swift-proxy swift-account swift-container swift-object)
command -v memcached >/dev/null || need+=(memcached)
# tests/client/test_proxy.py sends the client's requests through a real forward proxy.
command -v tinyproxy >/dev/null || need+=(tinyproxy)
# tests/client/test_nocopy_import.py clones files on a loop-mounted btrfs (copy-on-write).
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
# The web site's browser tests (tests/web) drive Debian's headless Chromium through its driver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)

if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing system packages: ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "error: missing packages (${need[*]}) and no root or sudo to install them" >&2; exit 1
  fi
  $sudo apt-get update -qq
  # Quiet unless it fails: postinst scripts (swift, memcached) talk about init systems on stderr.
  apt_log=$(mktemp)
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >"$apt_log" 2>&1; then
    tail -30 "$apt_log" >&2
    echo "error: apt-get install failed (${need[*]})" >&2
    rm -f "$apt_log"
    exit 1
  fi
  rm -f "$apt_log"
fi

version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
  echo "error: Hangar needs Python 3.11; python3 is $version" >&2
  exit 1
fi

stamp=.venv/.hangar-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> creating .venv and installing Hangar (compiling llama-cpp-python takes a few minutes the first time)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  log=.venv/pip-install.log
  # A native (-march=native) build cached by pip could crash on another CPU: build portable code.
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
  if ! .venv/bin/python -m pip install -e '.[test,dev]' >"$log" 2>&1; then
    tail -30 "$log" >&2
    echo "error: pip install failed; full log in $log" >&2
    exit 1
  fi
  .venv/bin/python -c 'import registry.app, cli.main, runtime.app, llama_cpp'
  echo "$want" > "$stamp"
fi
