"""A capture run across hosts: its phases (launch, ready, start, capture, fetch, merge),
the host state machine, the fan-out over hosts with its launch gate, run.json, the
terminal tables, and `collect` (fetch later what a run could not).
"""
