"""What a run or a merge found, shown to people: terminal tables (`tables.py`) and the
self-contained report.html (`page.py`), both read from run.json (a run folder's, or the
`<output>.json` of `xdpcap merge`) and nothing else."""
