"""The `xdpcap` command line: `main` maps errors to exit codes; one module per command.

Each command module registers its sub-parser and turns flags into the typed options of
the library it calls (run/, merge/, lab/ ...); no work is done here beyond that.
"""
