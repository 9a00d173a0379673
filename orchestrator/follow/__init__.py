"""Following each packet across hosts, in one streaming pass over all hosts' captures:
the k-way join by time that finds every packet's sightings (join.py, with its C engine in
merge/_fastmerge.c), the fixed-size per-pair summaries it keeps for the clock alignment
(summaries.py), and the journeys built in the same pass — loss, delay and packet ids per
host pair (journeys.py, the receivers' filters run by cbpf_run.py).

Below it: merge/ (the reader, packet identity, the merge loop); above it: clock/ (the
alignment solved from the pass's bounds) and run/follow.py (the pass for run, collect
and merge).
"""
