#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for xdpcap: system packages, then the project in .venv.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Why each package:
#   python3-bpfcc        bcc for Python: compiles and loads the XDP sampler
#   linux-headers-amd64  kernel headers bcc compiles against (any version: XDP needs only UAPI;
#                        process attribution reads its two kernel offsets from the running
#                        kernel's BTF, /sys/kernel/btf/vmlinux, and needs no package of its own)
#   openssh-server       sshd for the namespace lab's hosts
#   tshark               tshark, capinfos, mergecap: reading and checking captures
#   tcpdump xdp-tools netsniff-ng   the peers in bench/ (tcpdump, xdpdump, trafgen)
#   iproute2 iputils-ping           namespaces, veths, bridges; lab traffic
#   bpftool              the tests list what is attached to an interface (`bpftool net`)
#   ruby vagrant         `ruby -c` and `vagrant validate` of the Vagrantfile, and the VM lab
#   vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base
#                        the VM lab's VMs: Vagrant's libvirt provider, libvirtd and virsh,
#                        QEMU (KVM where the CPU allows, else emulated), qcow2 disks, the
#                        libvirt networks' DHCP
#   debootstrap          `xdpcap lab vagrant-box` builds the VMs' Debian 12 box from packages
#   sudo                 the tests log in as a non-root user and capture through sudo
#   gcc python3-dev      build the merge's C loop (without them it falls back to Python)
#   clang llvm libbpf-dev   the tests build a cooperating XDP program with bpf/xdpcap_hook.h
#                        the way users build theirs (clang -target bpf, libbpf's headers)
#   chromium             headless, it renders report.html in a test (no console errors, plots drawn)
PACKAGES=(python3-bpfcc linux-headers-amd64 openssh-server tshark tcpdump xdp-tools
          netsniff-ng iproute2 iputils-ping bpftool ruby vagrant python3-venv sudo gcc python3-dev
          clang llvm libbpf-dev vagrant-libvirt libvirt-daemon-system libvirt-clients
          qemu-system-x86 qemu-utils dnsmasq-base debootstrap chromium)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# pip's build backend chatters on stderr even when all is well: show it only on failure.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { .venv/bin/python -m pip install -q --upgrade pip &&
       .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: installing the project into .venv failed (pip's output above)" >&2
  exit 1
fi
# An editable install compiles none of the project's own modules, and where
# PYTHONDONTWRITEBYTECODE is set (many containers) Python never caches them: every
# `xdpcap` start would compile them again, a tenth of a second before its first connect.
# Only a speed-up: a module edited later is compiled as before.
.venv/bin/python -m compileall -q agent orchestrator bpf >/dev/null || true
echo "setup: ready (.venv/bin/xdpcap)"
