"""The slowloris adversary's own code against a real payload server: rounds of idle streams, and an honest
fetch that still completes while they are held."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from hivemind.p2p import P2P

from swarm.net.server import PayloadServer
from swarm.net.transfer import fetch
from swarm.net.wire import payload_hash, protocol_name
from swarm.sim.adversaries.stalling import hold_idle_streams

RUN = "feedfacecafebeef"
pytestmark = pytest.mark.timeout(60)


def test_slowloris_rounds_do_not_starve_an_honest_fetch():
    payload = os.urandom(1 << 20)
    digest = payload_hash(payload)

    async def main():
        server = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        maddrs = [str(m) for m in await server.get_visible_maddrs()]
        attacker = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
        client = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
        try:
            srv = await PayloadServer(server, {digest: payload}.get, RUN).start()
            targets = {server.peer_id.to_base58(): [m.split("/p2p/")[0] for m in maddrs]}
            hold = asyncio.create_task(hold_idle_streams(attacker, targets, protocol_name(RUN), time.time() + 5))
            await asyncio.sleep(1.5)  # the first round is open and held
            start = time.perf_counter()
            got = await fetch(client, server.peer_id, digest, len(payload), 30, run_id=RUN)
            elapsed = time.perf_counter() - start
            opened = await hold
            assert got == payload and elapsed < 5.0, elapsed
            assert opened >= 100 and srv.stats.refused >= 50, (opened, srv.stats.refused)
        finally:
            for p in (client, attacker, server):
                await p.shutdown()

    asyncio.run(main())
