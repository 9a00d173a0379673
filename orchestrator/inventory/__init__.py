"""Ansible inventories: the model (hosts, groups, variables), the built-in YAML/JSON/INI
reader, the checks on every value that reaches a remote shell, `--limit` patterns, and
the ansible-core reader for the sources that need Ansible itself.
"""
