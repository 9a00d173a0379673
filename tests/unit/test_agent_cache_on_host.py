"""A host keeps the newest few agent bundles; older versions go at the next upload."""

from __future__ import annotations

from types import SimpleNamespace

from xdpcap.orchestrator.remote import host_files


class FakeSftp:
    def __init__(self, files: dict[str, int]) -> None:
        self.files = dict(files)  # name -> mtime

    def listdir_attr(self, _folder: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(filename=n, st_mtime=t) for n, t in self.files.items()]

    def remove(self, path: str) -> None:
        del self.files[path.rsplit("/", 1)[1]]


def _agent(n: int) -> str:
    return f"xdpcap-agent-{n:016x}.pyz"


def test_only_the_newest_bundles_stay() -> None:
    files = {_agent(n): 1000 + n for n in range(7)}
    files["runs"] = 1  # the captures' folder, and anything else, is never touched
    files["xdpcap-agent-0000000000000001.pyz.abc123.tmp"] = 1  # an upload under way
    sftp = FakeSftp(files)
    host_files.prune_old_agents(sftp, "/home/u/.cache/xdpcap", keep=_agent(6))
    kept = {n for n in sftp.files if n.endswith(".pyz")}
    assert kept == {_agent(n) for n in (3, 4, 5, 6)}
    assert "runs" in sftp.files and any(n.endswith(".tmp") for n in sftp.files)


def test_the_bundle_just_uploaded_stays_even_with_an_old_mtime() -> None:
    """Never the one this run needs, even if the host's clock makes it look the oldest."""
    files = {_agent(n): 1000 + n for n in range(1, 6)}
    files[_agent(0)] = 1  # the one this run uploaded, oldest by mtime (clock skew)
    sftp = FakeSftp(files)
    host_files.prune_old_agents(sftp, "/c", keep=_agent(0))
    assert _agent(0) in sftp.files and _agent(1) not in sftp.files


def test_errors_leave_the_cache_as_it_was() -> None:
    class Broken(FakeSftp):
        def remove(self, path: str) -> None:
            raise PermissionError(path)

    sftp = Broken({_agent(n): n for n in range(9)})
    host_files.prune_old_agents(sftp, "/c", keep=_agent(8))  # no exception
    assert len(sftp.files) == 9
