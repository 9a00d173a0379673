"""What the controller keeps on a host and checks there: the launch script (one command
that sets up the folders, checks the cached agent and execs it), the agent cache's
pruning, and the sha256 a fetched file is checked against.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from paramiko import SFTPClient

CACHE_DIR = ".cache/xdpcap"  # relative to the SSH user's home
# The run's one command per host: set up the folders, report facts, check the cached
# agent against its hash and exec it (through sudo when not root) — or ask for an
# upload. Values arrive as positional parameters, never spliced into the script:
# $1 cache folder, $2 run folder, $3 agent, $4 its sha256, $5 become user ("" = root),
# $6 "password" when a sudo password follows on stdin; then the agent's argv.
# Every process it starts delays the agent: the clock's sync state, needed only after
# the capture, is the agent's to ask for (its "sync" event), once its window is open.
LAUNCH_SCRIPT = """set -e
umask 077
cache=$1 rundir=$2 agent=$3 sha=$4 become=$5 password=$6
shift 6
mkdir -p -m 700 "$cache" "$cache/runs" "$rundir"
chmod 700 "$cache" "$cache/runs"
uid=$(id -u)
echo "xdpcap-fact uid=$uid"
echo "xdpcap-fact home=$(pwd)"
sum=$(sha256sum "$agent" 2>/dev/null) || true
if [ "${sum%% *}" != "$sha" ]; then
    echo "xdpcap-launch need-upload"
    exit 0
fi
echo "xdpcap-launch ok"
if [ "$uid" = 0 ] && { [ -z "$become" ] || [ "$become" = root ]; }; then
    exec "$@"
fi
if [ "$password" = password ]; then
    exec sudo -S -p '' -u "${become:-root}" -- "$@"
fi
exec sudo -n -u "${become:-root}" -- "$@"
"""
AGENT_FILE = re.compile(r"^xdpcap-agent-[0-9a-f]{16}\.pyz$")

KEEP_AGENTS = 4  # agent versions kept on a host (another version may still be running)


def prune_old_agents(sftp: SFTPClient, cache_dir: str, keep: str) -> None:
    """After an upload: remove all but the newest KEEP_AGENTS bundles from the host's
    cache, so that upgrades do not pile up there. An agent imports from its bundle while
    it runs, so the newest few stay for runs of other versions still under way.
    Best effort: the cache stays as it was on any error."""
    try:
        entries = [e for e in sftp.listdir_attr(cache_dir) if AGENT_FILE.match(e.filename)]
        entries.sort(key=lambda e: e.st_mtime or 0, reverse=True)
        for entry in entries[KEEP_AGENTS:]:
            if entry.filename != keep:
                sftp.remove(f"{cache_dir}/{entry.filename}")
    except OSError:
        pass


def sha256_of(path: Path) -> str:
    """A file's sha256, read a MiB at a time (the fetch's check, and the collection's)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):  # flat memory for any size
            digest.update(chunk)
    return digest.hexdigest()
