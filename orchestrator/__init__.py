"""The xdpcap controller: it reads an inventory, starts an agent on every host over SSH,
opens one capture window everywhere, fetches the hosts' files and merges them.

Sub-packages, one job each (dependencies point down this list, never up):
  cli/        one thin module per command: flags -> typed options -> library calls
  run/        a run's phases, the fan-out and launch gate, run.json, collect
  report/     a run's tables and its report.html
  remote/     one host over SSH: its state machine, the agent's launch and events, fetch
  inventory/  Ansible inventories: the built-in reader, ansible-core's, --limit patterns
  clock/      each host's clock: the probe, and the alignment from the traffic itself
  follow/     one streaming pass over all captures: each packet's sightings, journeys
  merge/      the pcapng reader, packet identity, the time-ordered merge (and its C loop),
              packet ids, the live merge
  lab/        test hosts made of network namespaces, and the Vagrant lab's inventory
`errors` holds the controller's exceptions on top of the agent's hierarchy.
"""
