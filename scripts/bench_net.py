"""Network micro-benchmarks on loopback: peer start, signed DHT store/get, payload throughput.

Compares swarm.net.transfer.fetch (framed, size-capped, hash-checked, END+ACK) with hivemind's
bare raw binary stream and its protobuf stream, all over replicas of two DHT nodes' p2pd,
which is how peers move payloads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hivemind.dht import DHT  # noqa: E402
from hivemind.p2p import P2P  # noqa: E402
from hivemind.proto import runtime_pb2  # noqa: E402
from hivemind.utils.timed_storage import get_dht_time  # noqa: E402

import swarm  # noqa: E402,F401 - sets the torch sharing strategy before hivemind loads
from swarm.net.dht import start_dht, visible_maddrs  # noqa: E402
from swarm.net.identity import load_or_create  # noqa: E402
from swarm.net.records import CommitRecord, commit_digest, get_records, store_record  # noqa: E402
from swarm.net.server import PayloadServer  # noqa: E402
from swarm.net.transfer import fetch  # noqa: E402
from swarm.net.wire import (
    CHUNK,  # noqa: E402
    payload_hash,  # noqa: E402
)

RUN = "bench00000000000"
RAW = "/bench/raw"
PROTO = "bench.proto"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_net.json", help="where to write the JSON results")
    parser.add_argument("--mib", type=int, default=32, help="payload size in MiB for the throughput runs")
    parser.add_argument("--repeats", type=int, default=5, help="transfers per method (the best and median reported)")
    parser.add_argument("--ops", type=int, default=50, help="signed DHT stores and gets to time")
    return parser.parse_args(argv)


async def raw_handler(payload: bytes):
    """hivemind's raw stream: one length-prefixed blob, no framing or checks of ours."""

    async def handle(info, reader, writer):
        try:
            await reader.readexactly(1)
            await P2P.send_raw_data(payload, writer, chunk_size=CHUNK)
            await reader.readexactly(1)  # wait for the client's ack like transfer does, to compare fairly
        finally:
            writer.close()

    return handle


async def raw_fetch(p2p: P2P, peer_id) -> bytes:
    """Client side of the bare raw stream."""
    _, reader, writer = await p2p.call_binary_stream_handler(peer_id, RAW)
    try:
        writer.write(b"?")
        await writer.drain()
        data = await P2P.receive_raw_data(reader)
        writer.write(b"!")
        await writer.drain()
        return data
    finally:
        writer.close()


def proto_handler(payload: bytes):
    """hivemind's protobuf stream, 1 MiB messages."""

    async def handle(request: runtime_pb2.Tensor, context):
        view = memoryview(payload)
        for offset in range(0, len(view), CHUNK):
            yield runtime_pb2.Tensor(buffer=bytes(view[offset : offset + CHUNK]))

    return handle


async def proto_fetch(p2p: P2P, peer_id) -> bytes:
    """Client side of the protobuf stream."""
    parts = []
    stream = await p2p.iterate_protobuf_handler(peer_id, PROTO, runtime_pb2.Tensor(), runtime_pb2.Tensor)
    async for msg in stream:
        parts.append(msg.buffer)
    return b"".join(parts)


async def _serve(daemon_maddr, payload: bytes, ready, stop) -> None:
    """Server side, in its own process (as on a real peer): all three handlers on one replica."""
    p2p = await P2P.replicate(daemon_maddr)
    await PayloadServer(p2p, {payload_hash(payload): payload}.get, RUN).start()
    await p2p.add_binary_stream_handler(RAW, await raw_handler(payload))
    await p2p.add_protobuf_handler(PROTO, proto_handler(payload), runtime_pb2.Tensor, stream_output=True)
    ready.set()
    deadline = time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def _server_process(daemon_maddr, payload: bytes, ready, stop) -> None:
    asyncio.run(_serve(daemon_maddr, payload, ready, stop))


async def throughput(server_dht, client_dht, payload: bytes, repeats: int) -> dict[str, dict[str, float]]:
    """MiB/s for each method, same payload, same pair of peers, server and client in separate processes."""
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    daemon_maddr = server_dht.run_coroutine(DHT._get_p2p_daemon_listen_maddr)
    server = ctx.Process(target=_server_process, args=(daemon_maddr, payload, ready, stop), daemon=True)
    server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("benchmark server did not start")
        pc = await client_dht.replicate_p2p()
        peer = server_dht.peer_id
        h = payload_hash(payload)
        methods = {
            "swarm_transfer_fetch": lambda: fetch(pc, peer, h, len(payload), 120, run_id=RUN),
            "hivemind_raw_stream": lambda: raw_fetch(pc, peer),
            "hivemind_protobuf_stream": lambda: proto_fetch(pc, peer),
        }
        mib = len(payload) / 2**20
        for run in methods.values():  # warm-up: connections and handlers
            await run()
        rates: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(repeats):  # interleaved, so background load hits every method alike
            for name, run in methods.items():
                t = time.perf_counter()
                data = await run()
                rates[name].append(mib / (time.perf_counter() - t))
                assert len(data) == len(payload)
        return {
            name: {"best_mib_s": round(max(r), 1), "median_mib_s": round(statistics.median(r), 1)}
            for name, r in rates.items()
        }
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()
            server.join(5)


def main(argv: list[str] | None = None) -> int:
    """Run everything once and write the JSON."""
    args = parse_args(argv)
    out: dict = {
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "payload_mib": args.mib,
    }
    with tempfile.TemporaryDirectory() as tmp:
        ids = [load_or_create(Path(tmp) / f"p{i}.key") for i in range(3)]
        dhts = []
        try:
            t = time.perf_counter()
            dhts.append(start_dht(ids[0], run_id=RUN))
            out["start_first_peer_s"] = round(time.perf_counter() - t, 3)
            join = visible_maddrs(dhts[0])
            t = time.perf_counter()
            dhts.append(start_dht(ids[1], initial_peers=join, run_id=RUN))
            out["start_joining_peer_s"] = round(time.perf_counter() - t, 3)
            t = time.perf_counter()
            dhts.append(start_dht(ids[2], initial_peers=join, run_id=RUN, check_identity_free=False))
            out["start_joining_peer_no_identity_check_s"] = round(time.perf_counter() - t, 3)

            a, b = dhts[0], dhts[1]
            stores, gets = [], []
            for i in range(args.ops):
                digest = commit_digest(RUN, i, ids[0].peer_key, "ab" * 32)
                t = time.perf_counter()
                ok = store_record(a, RUN, i, "commit", CommitRecord(digest=digest), ids[0], get_dht_time() + 300)
                stores.append(time.perf_counter() - t)
                assert ok
                t = time.perf_counter()
                got = get_records(b, RUN, i, "commit")
                gets.append(time.perf_counter() - t)
                assert got[ids[0].public_key_str].digest == digest
            out["signed_store_ms_median"] = round(1000 * statistics.median(stores), 2)
            out["signed_get_latest_ms_median"] = round(1000 * statistics.median(gets), 2)

            payload = os.urandom(args.mib * 2**20)
            out["throughput"] = asyncio.run(throughput(a, b, payload, args.repeats))
        finally:
            for dht in reversed(dhts):
                dht.shutdown()
    text = json.dumps(out, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
