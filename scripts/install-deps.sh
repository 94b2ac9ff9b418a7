#!/usr/bin/env bash
# Installs every Debian 12 package nbdmirror needs to build, test, run its demo and benchmark.
# Safe to run again: apt-get skips what is already there.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  SUDO=sudo
else
  SUDO=
fi

packages=(
  # build
  build-essential cmake ninja-build pkg-config clang clang-format clang-tidy libclang-rt-14-dev
  # libraries
  liburing-dev libboost-dev libboost-system-dev libprotobuf-dev protobuf-compiler
  libssl-dev libcli11-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev googletest
  libisal-dev
  # real NBD clients and baselines
  libnbd-bin libnbd-dev nbdkit fio qemu-utils fuse3
  # filesystems, mounts, namespaces
  e2fsprogs util-linux iproute2 procps psmisc openssl
  # PostgreSQL and the coordinator
  postgresql-15 postgresql-contrib-15 etcd-server etcd-client
  # metrics: a real Prometheus server and its linter (promtool), and the Python client's parser
  prometheus python3-prometheus-client curl
  # benchmark output, and the counts of bench/quick_ab.sh (perf: mallocs) and
  # bench/instructions.sh (valgrind: instructions per write)
  python3 python3-matplotlib python3-protobuf jq linux-perf valgrind
)

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${packages[@]}"
