"""A capture run across hosts: its phases (launch, ready, start, capture, fetch, merge),
the fan-out over hosts with its launch gate, run.json and the printed result, the
terminal tables, and `collect` (fetch later what a run could not). Each host's state
machine is remote/state.py's.
"""
