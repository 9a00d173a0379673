"""Ansible inventories: the model (hosts, groups, variables), the built-in YAML/JSON/INI
reader, the checks on every value that reaches a remote shell, `--limit` patterns, and
the ansible-core reader for the sources that need Ansible itself.

- model: `Inventory`, `Host`, `Group`, variables that hide secrets, `format_host_list`
- load: the built-in reader's entry points (`load_inventory`, ...) and format detection
- yaml_json: the YAML reader, and the JSON reader built on YAML nodes for line numbers
- ini: the INI reader
- builder: what the readers fill; resolves groups, precedence and each host's settings
- host_keys: host keys in YAML and INI: `[x:y]` ranges, `:port`, IPv6 addresses
- checks: checks on every value that reaches ssh, sudo, the agent or a file name
- limit: the `--limit` pattern grammar and host selection
- ansible: inventories read through ansible-core, for the sources that need Ansible
"""
