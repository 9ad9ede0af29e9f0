"""Payload transfer under attack on loopback: an honest fetch during a slowloris, fetch_many with a slow server.

Slowloris: one attacker opens --idle streams to a PayloadServer and sends nothing; one honest
1 MiB fetch is timed with the default server (per-peer cap) and with the cap lifted (request
deadline alone). Slow server: one peer that reads the request and never answers, plus two
honest servers; fetch_many gets all three under --budget seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hivemind.p2p import P2P  # noqa: E402

import swarm  # noqa: E402,F401 - sets the torch sharing strategy before hivemind loads
from swarm.net.fetchmany import FetchRequest, fetch_many  # noqa: E402
from swarm.net.server import PayloadServer  # noqa: E402
from swarm.net.transfer import fetch  # noqa: E402
from swarm.net.wire import (
    payload_hash,  # noqa: E402
    protocol_name,  # noqa: E402
)

RUN = "bench00000000000"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_transfer_attacks.json", help="where to write the JSON results")
    parser.add_argument("--idle", type=int, default=200, help="idle streams the slowloris opens")
    parser.add_argument("--budget", type=float, default=5.0, help="fetch_many wall-clock budget in seconds")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-peer fetch timeout in seconds")
    return parser.parse_args(argv)


async def _p2p(initial: list | None = None) -> P2P:
    return await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=initial or [])


async def slowloris(n_idle: int, timeout: float, **server_limits) -> dict:
    """Time one honest fetch while n_idle streams from one attacker sit open and silent."""
    payload = os.urandom(2**20)
    server = await _p2p()
    maddrs = await server.get_visible_maddrs()
    attacker, client = await _p2p(maddrs), await _p2p(maddrs)
    streams = []
    try:
        srv = await PayloadServer(server, {payload_hash(payload): payload}.get, RUN, **server_limits).start()
        start = time.perf_counter()
        await fetch(client, server.peer_id, payload_hash(payload), len(payload), timeout, run_id=RUN)
        quiet = time.perf_counter() - start
        opened = await asyncio.gather(
            *(attacker.call_binary_stream_handler(server.peer_id, protocol_name(RUN)) for _ in range(n_idle)),
            return_exceptions=True,
        )
        streams = [o for o in opened if not isinstance(o, BaseException)]
        await asyncio.sleep(0.5)
        held = srv.streams_of(attacker.peer_id)
        start = time.perf_counter()
        try:
            await fetch(client, server.peer_id, payload_hash(payload), len(payload), timeout, run_id=RUN)
            outcome = "ok"
        except Exception as e:  # noqa: BLE001 - reported
            outcome = str(e)
        return {"idle_opened": len(streams), "idle_held_by_server": held, "refused": srv.stats.refused,
                "fetch_s_quiet": round(quiet, 4), "fetch_s_under_attack": round(time.perf_counter() - start, 4),
                "outcome": outcome}
    finally:
        for _, _, writer in streams:
            writer.close()
        for p in (client, attacker, server):
            await p.shutdown()


async def slow_server(budget: float, timeout: float) -> dict:
    """fetch_many over one silent server and two honest ones, the silent one first in the order."""
    good = [os.urandom(2**20) for _ in range(2)]

    async def silent(_info, reader, writer):
        try:
            await reader.readexactly(5)
            await asyncio.sleep(timeout + budget)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - the point is to say nothing
            pass
        finally:
            writer.close()

    servers = [await _p2p() for _ in range(3)]
    client = await _p2p([m for s in servers for m in await s.get_visible_maddrs()])
    try:
        await servers[0].add_binary_stream_handler(protocol_name(RUN), silent)
        for s, p in zip(servers[1:], good, strict=True):
            await PayloadServer(s, {payload_hash(p): p}.get, RUN).start()
        reqs = [FetchRequest(payload_hash(b"never"), 2**20, [servers[0].peer_id.to_base58()])]
        reqs += [FetchRequest(payload_hash(p), len(p), [s.peer_id.to_base58()]) for s, p in zip(servers[1:], good,
                                                                                                 strict=True)]
        start = time.perf_counter()
        results = await fetch_many(client, reqs, budget, 4, timeout=timeout, run_id=RUN)
        wall = time.perf_counter() - start
        return {"budget_s": budget, "per_peer_timeout_s": timeout, "wall_s": round(wall, 3),
                "results": [{"ok": r.data is not None, "seconds": round(r.seconds, 3), "error": r.error}
                            for r in results]}
    finally:
        for p in (client, *servers):
            await p.shutdown()


async def main_async(args: argparse.Namespace) -> dict:
    return {
        "slowloris_default_server": await slowloris(args.idle, args.timeout),
        "slowloris_no_per_peer_cap": await slowloris(args.idle, args.timeout, max_per_peer=10**6),
        "fetch_many_slow_server": await slow_server(args.budget, args.timeout),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
