"""Test hosts on this machine: network namespaces on a bridge, each with its own veth,
addresses and sshd (`xdpcap lab`), the traffic between them, and the Vagrant lab's inventory.

Modules, one job each:
  namespaces  the Lab: up (bridge, namespaces, veths, sshd), state dir, status, down
  plan        the lab's plan: name rules, kernel object names, subnets, LabHost
  sshd        each host's sshd: host key, config, start, readiness, pid, known_hosts line
  traffic     ping, TCP and UDP between every pair of hosts, and the report
  programs/   the echo server and client traffic runs inside the namespaces (Python files)
  vagrant     `vagrant ssh-config` parsing and the Vagrant lab's inventory
  box         the Vagrant lab's box, built from Debian packages with debootstrap
  libvirt     libvirtd/virtlogd started and stopped by pid where no init runs; what it holds
  system      shared helpers: LabError, commands, `ip -j`, pids, the lock, files, YAML
"""
