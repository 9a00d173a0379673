"""Each host's clock against the controller's: the probe (NTP-style exchanges over the
agent's channel), and the alignment from the traffic itself (one streaming join over all
hosts' captures, same-packet and answer constraints, drift, the solver) that the merge
applies.
"""
