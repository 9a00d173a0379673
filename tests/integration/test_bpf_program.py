"""The XDP program itself, on crafted frames through BPF_PROG_TEST_RUN (no interface needed)."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from xdpcap.agent import contract
from xdpcap.agent.consumer import SampleConsumer, cap_len_of, direction_of
from xdpcap.agent.sampler import Sampler

from .bpf_test_run import XDP_PASS, prog_test_run


def _frame(length: int) -> bytes:
    """An Ethernet + IPv4 + UDP frame of `length` bytes with a recognisable payload."""
    payload = bytes(i & 0xFF for i in range(length - 42))
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        length - 14,
        1,
        0,
        64,
        17,
        0,
        bytes([10, 0, 0, 1]),
        bytes([10, 0, 0, 2]),
    )
    udp = struct.pack("!HHHH", 1234, 5678, length - 34, 0)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp + payload


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory) -> Path:
    """A program cache holding the sampler, filled by one bcc compile."""
    folder = tmp_path_factory.mktemp("bpf-cache") / "bpf"
    with Sampler("lo", snaplen=64, sample_rate=1, cache_dir=folder) as sampler:
        sampler.compile()
        assert sampler.loaded_from == "bcc", sampler.cache_note
    assert len(list(folder.glob("*.json"))) == 1
    return folder


@pytest.fixture(params=["bcc", "cache"])
def make_sampler(request, filled_cache: Path):
    """Every test runs on the program as bcc loads it and as the cache reloads it."""
    made = []

    def make(snaplen: int, sample_rate: int) -> tuple[Sampler, SampleConsumer]:
        cache_dir = filled_cache if request.param == "cache" else None
        sampler = Sampler("lo", snaplen=snaplen, sample_rate=sample_rate, cache_dir=cache_dir)
        made.append(sampler)
        sampler.compile()
        assert sampler.loaded_from == request.param, sampler.cache_note
        consumer = SampleConsumer()
        sampler.open_buffers(page_count=256, wakeup_events=1)
        sampler.enable(REALTIME_OFFSET_NS)
        return sampler, consumer

    yield make
    for sampler in made:
        sampler.close()


# A wall clock ~2023 ahead of the monotonic one: the program adds it to every stamp.
REALTIME_OFFSET_NS = 1_700_000_000_123_456_789


def _drain(sampler: Sampler, consumer: SampleConsumer) -> list[tuple[int, int, int, bytes]]:
    """Every sample as (ts, orig_len, cap_len, packet bytes), read from the EPB the
    program and the consumer built for the file; the EPB's framing is checked too."""
    got = []
    for _ in range(5):
        sampler.poll(50)
        for chunk in sampler.read():
            consumer.parse_chunk(chunk)
        for ts, block, key in consumer.take():
            btype, total, if_id, high, low, cap_len, orig_len = contract.EPB_HEAD.unpack_from(block)
            assert (btype, if_id, cap_len) == (6, 0, cap_len_of(key))
            assert direction_of(key) == contract.INBOUND
            assert total == len(block) == struct.unpack_from("<I", block, total - 4)[0]
            assert total % 4 == 0
            assert (high << 32 | low) == ts + REALTIME_OFFSET_NS
            got.append((ts, orig_len, cap_len, block[28 : 28 + cap_len]))
    assert consumer.malformed == 0
    return got


def test_snaplen_truncates_but_keeps_the_original_length(make_sampler) -> None:
    sampler, consumer = make_sampler(snaplen=128, sample_rate=1)
    frame = _frame(1000)
    assert prog_test_run(sampler.prog_fd, frame) == XDP_PASS
    samples = _drain(sampler, consumer)
    assert len(samples) == 1
    ts, orig_len, cap_len, data = samples[0]
    assert (orig_len, cap_len) == (1000, 128)
    assert data == frame[:128]
    assert ts > 0
    counters = sampler.counters()
    assert (counters.seen, counters.sampled, counters.not_sampled, counters.output_failed) == (
        1,
        1,
        0,
        0,
    )


def test_short_frame_is_captured_whole(make_sampler) -> None:
    sampler, consumer = make_sampler(snaplen=262144, sample_rate=1)
    frame = _frame(60)
    prog_test_run(sampler.prog_fd, frame)
    ((_ts, orig_len, cap_len, data),) = _drain(sampler, consumer)
    assert orig_len == cap_len == 60
    assert data == frame


def test_one_in_n_sampling_and_counters_add_up(make_sampler) -> None:
    sampler, consumer = make_sampler(snaplen=64, sample_rate=4)
    runs = 4000
    assert prog_test_run(sampler.prog_fd, _frame(100), repeat=runs) == XDP_PASS
    samples = _drain(sampler, consumer)
    counters = sampler.counters()
    assert counters.seen == runs
    assert counters.sampled + counters.not_sampled + counters.output_failed == runs
    assert counters.output_failed == 0
    assert len(samples) == counters.sampled
    # 1 in 4 of 4000: a binomial with mean 1000 and sd ~27; 800..1200 is > 7 sd wide.
    assert 800 <= counters.sampled <= 1200


def test_blocks_read_back_by_an_independent_pcapng_reader(make_sampler, tmp_path: Path) -> None:
    """The EPB the program stamps, with the consumer's trailer, is what pcapng readers
    expect: python-pcapng finds the packet, its wall-clock time and both options."""
    import pcapng
    from xdpcap.agent.pcapng import PcapngWriter

    sampler, consumer = make_sampler(snaplen=100, sample_rate=1)
    frames = [_frame(n) for n in (60, 61, 62, 63, 1000)]  # every padding, and a cut
    for frame in frames:
        prog_test_run(sampler.prog_fd, frame)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    for _ in range(5):
        sampler.poll(50)
        for chunk in sampler.read():
            consumer.parse_chunk(chunk)
    items = consumer.take()
    path = tmp_path / "blocks.pcapng"
    with path.open("wb") as f:
        writer = PcapngWriter(f)
        writer.add_interface("lo", snaplen=100)
        writer.write_blocks([block for _ts, block, _cap in items], len(items))
        writer.flush()
    with path.open("rb") as f:
        packets = [b for b in pcapng.FileScanner(f) if isinstance(b, pcapng.blocks.EnhancedPacket)]
    assert [p.packet_data for p in packets] == [frame[:100] for frame in frames]
    assert [p.packet_len for p in packets] == [len(frame) for frame in frames]
    for packet, (ts, _block, _cap) in zip(packets, items):
        assert packet.timestamp_high << 32 | packet.timestamp_low == ts + REALTIME_OFFSET_NS
        assert ts <= before
        assert packet.options["epb_flags"].inout == "inbound"
        assert packet.options["epb_queue"] == 0


def test_disabled_program_counts_nothing(make_sampler) -> None:
    sampler, consumer = make_sampler(snaplen=64, sample_rate=1)
    sampler.disable()
    prog_test_run(sampler.prog_fd, _frame(100), repeat=10)
    assert _drain(sampler, consumer) == []
    assert sampler.counters().seen == 0


def test_maps_work_without_libbpf_so(monkeypatch) -> None:
    """Where libbpf.so.1 is missing, maps go through bcc's own exports (no cache)."""
    from xdpcap.agent import libbpf

    def missing():
        raise libbpf.LibbpfError(2, "libbpf.so.1 is not installed")

    monkeypatch.setattr(libbpf, "_lib", missing)
    libbpf._map_calls.cache_clear()
    try:
        with Sampler("lo", snaplen=64, sample_rate=1, cache_dir=Path("/nonexistent")) as sampler:
            sampler.compile()
            assert sampler.loaded_from == "bcc"  # the cache needs libbpf: not used
            consumer = SampleConsumer()
            sampler.open_buffers(page_count=64, wakeup_events=1)
            sampler.enable(REALTIME_OFFSET_NS)
            prog_test_run(sampler.prog_fd, _frame(100), repeat=5)
            assert len(_drain(sampler, consumer)) == 5
            assert sampler.counters().seen == 5
    finally:
        libbpf._map_calls.cache_clear()
