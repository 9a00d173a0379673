"""The compiled-program cache: relocation, trust checks, damage, pruning (no BPF needed)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from xdpcap.agent import program_cache
from xdpcap.agent.libbpf import MapSpec

INSN = struct.Struct("<BBhi")


def _ld_map_fd(dst: int, fd: int) -> bytes:
    return INSN.pack(0x18, (1 << 4) | dst, 0, fd) + INSN.pack(0, 0, 0, 0)


def _ld_imm64(dst: int, value: int) -> bytes:
    # The second slot's imm is the upper half: it must never be taken for an fd.
    return INSN.pack(0x18, dst, 0, value) + INSN.pack(0, 0, 0, 7)


EXIT = INSN.pack(0x95, 0, 0, 0)
MOV_R0_2 = INSN.pack(0xB7, 0, 0, 2)


def _program(*maps_fds: int) -> program_cache.CompiledProgram:
    insns = b"".join(_ld_map_fd(1, fd) for fd in maps_fds) + _ld_imm64(2, 7) + MOV_R0_2 + EXIT
    maps = tuple(program_cache.CachedMap(MapSpec(f"m{fd}", 2, 4, 12, 1, 0), fd) for fd in maps_fds)
    functions = (
        program_cache.CachedFunction("xdpcap_sampler", 6, insns),
        program_cache.CachedFunction("xdpcap_egress", 3, insns),
    )
    return program_cache.CompiledProgram("GPL", functions, maps)


def _imms(insns: bytes) -> list[int]:
    return [INSN.unpack_from(insns, i)[3] for i in range(0, len(insns), 8)]


def test_relocate_points_map_references_at_new_fds() -> None:
    program = _program(5, 6)
    out = program_cache.relocate(program.functions[0].insns, {5: 40, 6: 41})
    assert _imms(out) == [40, 0, 41, 0, 7, 7, 2, 0]  # the constant's 7s are untouched


def test_relocate_refuses_an_unknown_fd() -> None:
    with pytest.raises(ValueError, match="unknown map fd 9"):
        program_cache.relocate(_program(9).functions[0].insns, {5: 40})


def test_relocate_refuses_map_value_references() -> None:
    insns = INSN.pack(0x18, (2 << 4) | 1, 0, 5) + INSN.pack(0, 0, 0, 0) + EXIT
    with pytest.raises(ValueError, match="unsupported"):
        program_cache.relocate(insns, {5: 40})


def test_store_then_load_round_trips(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    key = program_cache.cache_key("source", "6.18")
    program = _program(5, 6)
    program_cache.store(folder, key, program)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / f"{key}.json").stat().st_mode & 0o777 == 0o600
    assert program_cache.load(folder, key) == program
    assert program_cache.load(folder, program_cache.cache_key("source", "6.19")) is None


def test_key_depends_on_every_part() -> None:
    base = program_cache.cache_key("a", "b")
    assert base != program_cache.cache_key("a", "c")
    assert base != program_cache.cache_key("ab", "")


@pytest.mark.parametrize(
    ("target", "mode"),
    [("folder", 0o755), ("folder", 0o770), ("file", 0o620), ("file", 0o602)],
)
def test_an_entry_others_could_change_is_ignored(tmp_path: Path, target: str, mode: int) -> None:
    folder = tmp_path / "cache"
    key = program_cache.cache_key("x")
    program_cache.store(folder, key, _program(5))
    os.chmod(folder if target == "folder" else folder / f"{key}.json", mode)
    assert program_cache.load(folder, key) is None


def test_a_symlinked_entry_is_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    key = program_cache.cache_key("x")
    program_cache.store(folder, key, _program(5))
    real = tmp_path / "elsewhere.json"
    (folder / f"{key}.json").rename(real)
    (folder / f"{key}.json").symlink_to(real)
    assert program_cache.load(folder, key) is None


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"format": 1}', b"\xff\xfe"])
def test_a_damaged_entry_is_ignored(tmp_path: Path, damage: bytes) -> None:
    folder = tmp_path / "cache"
    key = program_cache.cache_key("x")
    program_cache.store(folder, key, _program(5))
    (folder / f"{key}.json").write_bytes(damage)
    assert program_cache.load(folder, key) is None


def test_store_refuses_what_could_not_be_loaded(tmp_path: Path) -> None:
    program = _program(5)
    broken = program_cache.CompiledProgram(program.license, program.functions, ())
    with pytest.raises(ValueError):
        program_cache.store(tmp_path / "cache", "k", broken)
    assert not (tmp_path / "cache").exists()


def test_old_entries_are_pruned(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    keys = [program_cache.cache_key(str(i)) for i in range(program_cache.KEEP_ENTRIES + 3)]
    for age, key in enumerate(keys):
        program_cache.store(folder, key, _program(5))
        os.utime(folder / f"{key}.json", (1_000_000 + age, 1_000_000 + age))
    program_cache.store(folder, keys[-1], _program(5))  # prune after the last write
    left = {p.stem for p in folder.glob("*.json")}
    assert len(left) == program_cache.KEEP_ENTRIES
    assert keys[-1] in left and keys[0] not in left


def test_env_var_chooses_or_disables_the_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(program_cache.ENV_VAR, "off")
    assert program_cache.default_dir() is None
    monkeypatch.setenv(program_cache.ENV_VAR, str(tmp_path))
    assert program_cache.default_dir() == tmp_path
