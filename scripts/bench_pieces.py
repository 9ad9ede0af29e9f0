"""Benchmark: one object from capped holders, whole from one holder at a time against in pieces from all at once.

Needs root (the network lab: swarm/sim/lab.py). Every holder is a public host whose uplink is capped with tc tbf,
running the real payload server; the fetcher is a host of its own. Three fetches of the same object, each in a
fresh fetcher process:

    whole    fetch_first, one holder at a time (how checkpoints and packs came before pieces)
    pieces   fetch_pieces from every holder at once
    drop     both again while the first holder's link goes down a third of the way into the pieced fetch
             (and at the same moment of the whole one): whole starts over at the next holder, pieces go on

    sudo .venv/bin/python scripts/bench_pieces.py --holders 3 --uplink 20 --mib 24 --out runs/bench-pieces.json

Prints one line per fetch and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = "b1ecebe5b1ecebe5"


def make_object(mib: int, seed: int) -> bytes:
    """The same bytes in every process, without shipping them: a seeded generator."""
    import random

    return random.Random(seed).randbytes(mib << 20)


async def serve(address: str, mib: int, seed: int) -> None:
    from hivemind.p2p import P2P

    from swarm.net.server import PayloadServer
    from swarm.net.wire import payload_hash

    data = make_object(mib, seed)
    p2p = await P2P.create(host_maddrs=[f"/ip4/{address}/tcp/0"])
    await PayloadServer(p2p, {payload_hash(data): data}.get, RUN).start()
    maddrs = [str(m) for m in await p2p.get_visible_maddrs() if address in str(m)]
    print(json.dumps({"peer": p2p.peer_id.to_base58(), "maddrs": maddrs}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    await p2p.shutdown()


async def fetch_once(address: str, mode: str, holders: dict, mib: int, seed: int, timeout: float) -> dict:
    from hivemind.p2p import P2P

    from swarm.net.multisource import fetch_pieces
    from swarm.net.pieces import pieces_root
    from swarm.net.transfer import fetch_first
    from swarm.net.wire import TransferStats, payload_hash

    data = make_object(mib, seed)
    digest, root = payload_hash(data), pieces_root(data)
    p2p = await P2P.create(host_maddrs=[f"/ip4/{address}/tcp/0"])
    stats = TransferStats()
    maddrs = {pid: [m.split("/p2p/")[0] for m in ms] for pid, ms in holders.items()}
    print("START", flush=True)
    started = time.perf_counter()
    error = None
    try:
        if mode == "whole":
            got = await fetch_first(p2p, list(holders), digest, len(data), timeout, run_id=RUN, max_parallel=1,
                                    stats=stats, maddrs=maddrs)
        else:
            got = await fetch_pieces(p2p, list(holders), digest, root, len(data), timeout, run_id=RUN,
                                     stats=stats, maddrs=maddrs)
        ok = got == data
    except Exception as err:  # noqa: BLE001 - reported in the figures
        ok, error = False, " ".join(str(err).split())[:300]
    seconds = time.perf_counter() - started
    await p2p.shutdown()
    return {"mode": mode, "ok": ok, "seconds": round(seconds, 2), "bytes_in": stats.bytes_in, "error": error}


def bench(args) -> dict:
    from swarm.sim.lab import ETH, Lab, tbf_args

    results = {"holders": args.holders, "uplink_mbit": args.uplink, "mib": args.mib, "runs": []}
    with Lab() as lab:
        fetcher = lab.add_public("fetcher")
        hosts = [lab.add_public(f"holder-{i}") for i in range(args.holders)]
        for host in hosts:
            subprocess.run(host.wrap(["tc", "qdisc", "add", "dev", ETH, "root", "tbf", *tbf_args(args.uplink)]),
                           check=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        servers, holders = [], {}
        try:
            for host in hosts:
                proc = subprocess.Popen(host.wrap([sys.executable, __file__, "--serve", host.address,
                                                   "--mib", str(args.mib), "--seed", str(args.seed)]),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                servers.append(proc)
                line = json.loads(proc.stdout.readline())
                holders[line["peer"]] = line["maddrs"]
            for mode, drop in (("whole", False), ("pieces", False), ("whole", True), ("pieces", True)):
                ideal = args.mib * 8 * 1.048576 / args.uplink  # one holder's uplink, whole object
                cmd = fetcher.wrap([sys.executable, __file__, "--fetch", fetcher.address, "--mode", mode,
                                    "--holder-map", json.dumps(holders), "--mib", str(args.mib), "--seed",
                                    str(args.seed), "--timeout", str(args.timeout)])
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
                try:
                    while proc.stdout.readline().strip() != "START":
                        pass
                    if drop:  # the first holder goes away a third of the way into a pieced fetch
                        time.sleep(ideal / args.holders / 3)
                        lab.partition(hosts[0].name)
                    out, _ = proc.communicate(timeout=args.timeout * (args.holders + 2) + 3 * ideal)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                    if drop:
                        lab.heal(hosts[0].name)
                row = {**json.loads(out.strip().splitlines()[-1]), "drop": drop}
                row["rate_mb_s"] = round(args.mib * 1.048576 / row["seconds"], 2) if row["ok"] else None
                results["runs"].append(row)
                print(f"{mode:6s} {'first holder dropped' if drop else 'all holders up':21s} "
                      f"{row['seconds']:7.2f}s  {row['rate_mb_s'] or 0:6.2f} MB/s  ok={row['ok']}"
                      + (f"  {row['error']}" if row["error"] else ""), flush=True)
        finally:
            for proc in servers:
                try:
                    proc.stdin.close()
                    proc.wait(timeout=10)
                except Exception:  # noqa: BLE001 - the lab kills what is left in its namespaces
                    proc.kill()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holders", type=int, default=3, help="holders of the object (default 3)")
    parser.add_argument("--uplink", type=float, default=20.0, help="each holder's uplink in Mbit/s (default 20)")
    parser.add_argument("--mib", type=int, default=24, help="object size in MiB (default 24)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the object's bytes")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request fetch timeout, seconds (default 30)")
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    parser.add_argument("--serve", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--fetch", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("whole", "pieces"), help=argparse.SUPPRESS)
    parser.add_argument("--holder-map", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import swarm  # noqa: F401 - sets the torch sharing strategy before hivemind loads

    if args.serve:
        asyncio.run(serve(args.serve, args.mib, args.seed))
        return 0
    if args.fetch:
        print(json.dumps(asyncio.run(fetch_once(args.fetch, args.mode, json.loads(args.holder_map), args.mib, args.seed,
                                                args.timeout))), flush=True)
        return 0
    results = bench(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
