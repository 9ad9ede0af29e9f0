"""A light miner that joins with only the manifest fetches the run's miner pack from the swarm."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarm.net.dht import start_dht, visible_maddrs

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pack() -> bytes:
    """The embedded default's 4-bit miner pack, built once for the module."""
    from teft.pack import build_pack
    from teft.selection import ExpertMap

    return build_pack("tiny", ExpertMap.load(REPO / "configs" / "tiny-math.map.json"), "4bit")


def test_a_light_miner_fetches_the_runs_pack_past_a_holder_that_sends_a_corrupted_piece(make_identity, tmp_path, pack):
    """The pack comes in pieces from both holders at once; the allowlisted one names the true pieces and then
    sends one with a byte flipped: that piece is refused on arrival and fetched again from the other holder."""
    from swarm import peer
    from swarm.launch import pack_spec, write_manifest
    from swarm.net.network import Network
    from swarm.net.pieces import PIECE, piece_manifest
    from swarm.protocol.manifest import load, run_id
    from swarm.protocol.store import Store
    data = pack
    ids = {n: make_identity(n) for n in ("liar", "holder", "miner")}
    manifest = load(write_manifest(REPO / "configs" / "tiny.yaml", tmp_path / "run.yaml",
                                   [ids["liar"].public_key_str], 0.0,
                                   {"quorum": 1, "pack": pack_spec(data)}))
    rid, digest = run_id(manifest), manifest.pack.sha256
    other = data[:-1] + bytes([data[-1] ^ 1])  # same size, the last piece corrupted
    held = Store(tmp_path / "holder")
    held.save_pack(data)
    dhts, nets = [], []
    try:
        dhts.append(start_dht(ids["liar"], run_id=rid))
        nets.append(Network(dhts[-1], rid, lambda h: other if h == digest else None, timeout=20))
        nets[-1].server._manifests[digest] = piece_manifest(data)  # it names the true pieces
        dhts.append(start_dht(ids["holder"], visible_maddrs(dhts[0]), run_id=rid))
        nets.append(Network(dhts[-1], rid, held.find, timeout=20))
        join = visible_maddrs(dhts[1])
        dhts.append(start_dht(ids["miner"], join, run_id=rid))
        nets.append(Network(dhts[-1], rid, lambda _: None, timeout=20))
        mine = Store(tmp_path / "miner")
        # the allowlisted validator is asked first (it sends other bytes), the initial peer beside it
        got = peer.fetch_pack(nets[-1], dhts[-1], manifest, rid, join, mine)
        assert got == data and mine.load_pack(digest) == data and mine.find(digest) == data  # kept and served
        assert not mine.partial_path(digest).exists()
        # both holders sent pieces, and the liar's good ones were kept: not two whole copies, as a whole-object
        # fetch from the liar and then the holder would be (a range may be doubled once at the end, ENDGAME_S)
        sent = nets[0].stats.bytes_out, nets[1].stats.bytes_out
        assert min(sent) > 0 and sum(sent) <= len(data) + 3 * PIECE, sent
    finally:
        for net in nets:
            net.close()
        for dht in dhts:
            dht.shutdown()


def test_a_light_miner_started_before_the_validators_serve_waits_for_them(make_identity, tmp_path, pack):
    """A simulation (or a swarm whose validators restart) starts light miners before any holder serves the pack:
    the miner asks again every few seconds instead of exiting (in a main job one did: 'routing: not found' from
    every validator 0.01 s after it joined)."""
    import threading
    import time

    from swarm import peer
    from swarm.launch import pack_spec, write_manifest
    from swarm.net.network import Network
    from swarm.protocol.manifest import load, run_id
    from swarm.protocol.store import Store
    data = pack
    ids = {n: make_identity(n) for n in ("validator", "miner")}
    manifest = load(write_manifest(REPO / "configs" / "tiny.yaml", tmp_path / "run.yaml",
                                   [ids["validator"].public_key_str], 0.0, {"quorum": 1, "pack": pack_spec(data)}))
    rid = run_id(manifest)
    held = Store(tmp_path / "validator")
    held.save_pack(data)
    dhts, nets = [], []
    try:
        dhts.append(start_dht(ids["validator"], run_id=rid))  # up, but serving nothing yet
        join = visible_maddrs(dhts[0])
        dhts.append(start_dht(ids["miner"], join, run_id=rid))
        nets.append(Network(dhts[-1], rid, lambda _: None, timeout=20))
        late = threading.Timer(3.0, lambda: nets.append(Network(dhts[0], rid, held.find, timeout=20)))
        late.start()
        started = time.monotonic()
        got = peer.fetch_pack(nets[0], dhts[1], manifest, rid, join, Store(tmp_path / "miner"), wait_s=60)
        late.join()
        assert got == data and 3.0 <= time.monotonic() - started < 30, time.monotonic() - started
    finally:
        for net in nets:
            net.close()
        for dht in dhts:
            dht.shutdown()
