"""`python -m swarm.simulate`: a whole swarm on localhost, each peer its own real process, then a report.

Starts a bootstrap node and every miner and validator with the same `python -m swarm.peer` a user runs,
generates their keys and the run manifest (validator allowlist, genesis), shows progress, stops every
process it started (also on Ctrl-C), and writes report.json, plots and summary.md to --out.

Adversaries misbehave on purpose, one process each: free-rider, noise, poison, nan, oversize, copycat,
replay, late (miners) and liar (an allowlisted validator that inverts its ranking); sybil-flood (200
throwaway keys, $TEFT_SYBILS), seed-grinder, slow-server, slowloris, slow-reader, state-liar, dht-blinder,
subkey-spammer and val-overfit (miners that attack liveness, the agreed state, the DHT and Proof-of-Loss),
and state-forger (an allowlisted validator that publishes a crafted state); `all` adds all 19.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarm.errors import SwarmError
from swarm.sim.adversaries import EXTRA, SHOWN, role_kind
from swarm.sim.faults import FREEZE, THAW, Fault, parse_faults, signal_tree
from swarm.sim.lab import Host, Lab
from swarm.sim.report import BASELINES

KINDS = SHOWN
# dozens of peers starting at once on two cores take well over the interactive default to reach the bootstrap
PEER_STARTUP_TIMEOUT = 180
# a home uplink in the lab (README, "A swarm across a real network"): a real 5 GB payload on 100 Mbit/s takes 400 s,
# 13.9% of a real 2880 s cycle; 13.9% of tiny's 20 s evaluate phase is 2.78 s, in which 923,592 bytes need 2.66 Mbit/s
DEFAULT_UPLINK_MBIT = 2.7
LAB_PORT = 31337  # every lab host has an address of its own: one port for all, so peers can be listed before they start


@dataclass
class PeerProc:
    name: str
    role: str
    adversary: str | None
    key: Path
    workdir: Path
    log: Path
    peer_id: str = ""
    allowlisted: bool = False
    start_cycle: int = 0  # start only when this cycle begins (late joiners)
    validation_data: Path | None = None  # a validator's private held-out data
    metrics_port: int | None = None
    background: str = "bf16"  # a miner's --background (teft.light): 4bit makes it a light miner
    proc: subprocess.Popen | None = None
    restarts: list[str] = field(default_factory=list)
    host: Host | None = None  # its machine in the network lab (None: 127.0.0.1)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the peer binds it a moment later)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Swarm:
    """Processes of one run, on 127.0.0.1 or each on its own host of a network lab: start, watch, stop; nothing
    is left running afterwards."""

    def __init__(self, out: Path, python: str = sys.executable, threads: int = 1, metrics: bool = False,
                 adversary_nice: int = 0, lab: Lab | None = None, uplink_mbit: float | None = None,
                 loss_pct: float = 0.0):
        self.out, self.python, self.threads, self.metrics = out, python, threads, metrics
        self.adversary_nice = adversary_nice
        self.lab, self.uplink_mbit, self.loss_pct = lab, uplink_mbit, loss_pct
        self.bootstrap_host: Host | None = lab.add_public("bootstrap") if lab is not None else None
        self.bootstrap_metrics_port: int | None = free_port() if metrics else None
        self.bootstrap: subprocess.Popen | None = None
        self.join: list[str] = []
        self.peers: list[PeerProc] = []
        self.manifest_path = out / "run.yaml"
        self.pack: Path | None = None  # the run's miner pack, when it has light miners
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "keys").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HIVEMIND_MEMORY_SHARING_STRATEGY": "file_descriptor", "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}

    def add(self, name: str, role: str, adversary: str | None = None, allowlisted: bool | None = None,
            start_cycle: int = 0, background: str = "bf16") -> PeerProc:
        from swarm.net.identity import load_or_create

        key = self.out / "keys" / f"{name}.key"
        peer = PeerProc(name, role, adversary, key, self.out / "peers" / name, self.out / "logs" / f"{name}.log",
                        start_cycle=start_cycle, background=background)
        peer.peer_id = load_or_create(key).peer_key
        peer.allowlisted = role == "validator" and adversary != "stranger" if allowlisted is None else allowlisted
        peer.workdir.mkdir(parents=True, exist_ok=True)
        if self.lab is not None:  # validators are public hosts; every miner is at home behind a NAT router
            peer.host = self.lab.add_public(name) if role == "validator" else \
                self.lab.add_home(name, self.uplink_mbit, self.loss_pct)
        self.peers.append(peer)
        return peer

    def write_manifest(self, template: Path, genesis: float, overrides: dict | None) -> None:
        from swarm.launch import write_manifest
        from swarm.net.identity import load_or_create

        keys = [load_or_create(p.key).public_key_str for p in self.peers if p.allowlisted]
        write_manifest(template, self.manifest_path, keys, genesis, overrides)

    def start_bootstrap(self, timeout: float = 60.0) -> None:
        log = open(self.out / "logs" / "bootstrap.log", "w")
        metrics = ["--config", str(self.manifest_path), "--metrics-port", str(self.bootstrap_metrics_port)] \
            if self.metrics else []
        host = self.bootstrap_host
        listen = host.maddr(LAB_PORT) if host else "/ip4/127.0.0.1/tcp/0"
        cmd = [self.python, "-m", "bootstrap", "--host-maddrs", listen,
               "--identity", str(self.out / "keys" / "bootstrap.key"), *metrics]
        self.bootstrap = subprocess.Popen(host.wrap(cmd) if host else cmd, stdout=subprocess.PIPE, stderr=log,
                                          text=True, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.bootstrap.stdout.readline()
            if not line:
                break
            if line.startswith("JOIN "):
                self.join.append(line.split()[1])
                (self.out / "join.txt").write_text(self.join[0] + "\n")
                break
        if not self.join:
            self.stop()
            raise SwarmError(f"the bootstrap node did not start; see {self.out / 'logs' / 'bootstrap.log'}")

    def command(self, peer: PeerProc) -> list[str]:
        """The command line of one peer: the same `python -m swarm.peer` a user runs (or the rogue's)."""
        entry = ["swarm.sim.rogue", "--adversary", peer.adversary] if peer.adversary else ["swarm.peer"]
        cmd = [self.python, "-m", *entry, "--role", peer.role, "--config", str(self.manifest_path),
               "--initial-peers", *self.join, *self.public_validators(peer), "--identity", str(peer.key),
               "--workdir", str(peer.workdir),
               "--threads", str(self.threads), "--startup-timeout", str(PEER_STARTUP_TIMEOUT)]
        if peer.validation_data:
            cmd += ["--validation-data", str(peer.validation_data)]
        if peer.background != "bf16":
            cmd += ["--background", peer.background]
        if self.pack is not None and peer.role == "validator":  # served to the light miners, who have none
            cmd += ["--pack", str(self.pack)]
        if peer.host is not None:  # listen on (and so announce) the host's own address, not 127.0.0.1
            cmd += ["--host-maddrs", peer.host.maddr(LAB_PORT)]
            if not peer.host.public:  # nobody can dial a home: records kept there would be out of others' reach
                cmd += ["--client-mode"]
        if self.metrics:
            peer.metrics_port = peer.metrics_port or free_port()
            cmd += ["--metrics-port", str(peer.metrics_port)]
        return cmd

    def public_validators(self, peer: PeerProc) -> list[str]:
        """In the lab, the allowlisted validators' addresses (a fixed port on each host), to join through too:
        as an operator lists several initial peers, so the swarm does not hang on one bootstrap node."""
        if self.lab is None:
            return []
        return [f"{v.host.maddr(LAB_PORT)}/p2p/{v.peer_id}" for v in self.peers
                if v.allowlisted and v.host is not None and v is not peer]

    def start_peer(self, peer: PeerProc) -> None:
        log = open(peer.log, "a")
        cmd = self.command(peer)
        if peer.adversary and self.adversary_nice and shutil.which("nice"):  # nice execs: the pid stays python's
            cmd = ["nice", "-n", str(self.adversary_nice), *cmd]
        peer.proc = subprocess.Popen(peer.host.wrap(cmd) if peer.host else cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env)

    def scrape(self) -> dict[str, dict[str, float] | None]:
        """Every metrics endpoint's current values by peer name (None where it did not answer)."""
        from swarm.protocol.metrics import scrape_url

        ports = {p.name: (p.metrics_port, p.host) for p in self.peers if p.metrics_port}
        if self.bootstrap_metrics_port:
            ports["bootstrap"] = (self.bootstrap_metrics_port, self.bootstrap_host)
        return {name: scrape_url(f"http://127.0.0.1:{port}/metrics") if host is None else self._scrape_in(host, port)
                for name, (port, host) in sorted(ports.items())}

    def _scrape_in(self, host: Host, port: int) -> dict[str, float] | None:
        """A scrape from inside a lab host's namespace, where its endpoint's 127.0.0.1 is."""
        import json

        code = ("import json, sys; from swarm.protocol.metrics import scrape_url; "
                "print(json.dumps(scrape_url(sys.argv[1])))")
        try:
            done = subprocess.run(host.wrap([self.python, "-c", code, f"http://127.0.0.1:{port}/metrics"]),
                                  capture_output=True, text=True, timeout=30, env=self.env)
            return json.loads(done.stdout)
        except (subprocess.TimeoutExpired, ValueError):
            return None

    def apply(self, fault: Fault, now: float) -> None:
        """Start a scripted fault (swarm.sim.faults) and note what was done."""
        fault.started = now
        for target in fault.targets:
            if fault.kind == "partition":
                self.lab.partition(target)
                fault.notes.append(f"{target} cut off the internet")
            elif fault.kind == "kill-bootstrap":
                if self.bootstrap is not None and self.bootstrap.poll() is None:
                    self.bootstrap.kill()
                    self.bootstrap.wait(10)
                fault.notes.append("bootstrap node SIGKILLed")
            else:
                proc = self._proc(target)
                fault.notes.append(f"{target}: SIGSTOP to {signal_tree(proc.pid, FREEZE) if proc else 0} processes")

    def undo(self, fault: Fault, now: float) -> None:
        """End a partition or a freeze."""
        fault.ended = now
        for target in fault.targets:
            if fault.kind == "partition":
                self.lab.heal(target)
                fault.notes.append(f"{target} back on the internet")
            else:
                proc = self._proc(target)
                fault.notes.append(f"{target}: SIGCONT to {signal_tree(proc.pid, THAW) if proc else 0} processes")

    def _proc(self, name: str) -> subprocess.Popen | None:
        if name == "bootstrap":
            return self.bootstrap
        return next((p.proc for p in self.peers if p.name == name), None)

    def alive(self) -> int:
        return sum(1 for p in self.peers if p.proc is not None and p.proc.poll() is None)

    def kill(self, peer: PeerProc) -> None:
        """SIGKILL, as a crash would: the peer must resume from its work directory."""
        if peer.proc is not None and peer.proc.poll() is None:
            peer.proc.send_signal(signal.SIGKILL)
            peer.proc.wait(10)

    def stop(self, grace: float = 20.0) -> None:
        procs = [p.proc for p in self.peers if p.proc is not None] + ([self.bootstrap] if self.bootstrap else [])
        for proc in procs:
            if proc.poll() is None:
                signal_tree(proc.pid, THAW)  # a frozen peer cannot hear SIGTERM
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in procs:  # a killed process at nice 10 on a loaded machine took over 5 s to be scheduled and die
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                print(f"warning: process {proc.pid} did not exit 60 s after SIGKILL", file=sys.stderr)


def payload_override(text: str) -> dict:
    """`codec` or `codec:key=value,...` as a manifest's payload section (checked when the manifest is written)."""
    name, _, rest = text.partition(":")
    out: dict = {"codec": name.strip()}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SwarmError(f"--payload {text}: '{item}' is not key=value (e.g. sparse:density=0.0625,bits=2)")
        try:
            number = float(value)
        except ValueError:
            raise SwarmError(f"--payload {text}: '{value}' is not a number") from None
        out[key.strip()] = int(number) if number.is_integer() and "." not in value else number
    return out


def give_private_data(swarm: Swarm, manifest, shared: str | None) -> None:
    """Each validator's own held-out data: fresh math problems from a secret seed (the shipped math domain),
    or the file given with --validation-data (held by every validator, never by a miner)."""
    if shared is None and manifest.data.train != "math":
        raise SwarmError("the manifest scores on private held-out data and its domain is not the shipped math: "
                         "pass --validation-data PATH for the validators")
    builder = Path(__file__).resolve().parents[2] / "scripts" / "build_corpora.py"
    for peer in swarm.peers:
        if peer.role != "validator":
            continue
        if shared is not None:
            peer.validation_data = Path(shared)
            continue
        peer.validation_data = swarm.out / "private" / f"{peer.name}.jsonl.gz"
        subprocess.run([swarm.python, str(builder), "--heldout-math", str(peer.validation_data)], check=True,
                       capture_output=True, env=swarm.env)


def main(argv: list[str] | None = None) -> int:
    import transformers

    transformers.logging.disable_progress_bar()
    parser = argparse.ArgumentParser(prog="python -m swarm.simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml", help="manifest template (default configs/tiny.yaml)")
    parser.add_argument("--miners", type=int, default=4, help="honest miners (default 4)")
    parser.add_argument("--light-miners", "--light_miners", type=int, default=0, metavar="N",
                        help="of the honest miners, N hold the experts they do not train in 4 bits (light miners, "
                             "--background 4bit): the run pins a miner pack that only the validators are given, so "
                             "the light miners fetch it over the swarm at startup; default 0")
    parser.add_argument("--validators", type=int, default=3, help="honest validators (default 3)")
    parser.add_argument("--cycles", type=int, default=6, help="cycles to run (default 6)")
    parser.add_argument("--adversary", nargs="*", default=[], metavar="KIND",
                        help=f"misbehaving peers to add, one process each: {', '.join(KINDS)}, or all")
    parser.add_argument("--baseline", nargs="?", const="all", default=None, metavar="KINDS",
                        help="after the swarm, also run baselines on the same data: single-process TEFT and full "
                             "fine-tuning on the swarm's token budget, a lone miner and dense DiLoCo (default all; "
                             f"or a comma list of {','.join(BASELINES)})")
    parser.add_argument("--out", required=True, help="output directory (report.json, plots, summary.md, logs)")
    parser.add_argument("--start-in", "--start_in", type=float, default=None,
                        help="seconds until genesis, for every process to start (default: 30 + 8 per peer; 26 "
                             "peers on 2 cores took up to 150 s to load)")
    parser.add_argument("--timings", default=None,
                        help="override phase seconds, e.g. sync=3,train=12,commit=3,reveal=4,evaluate=10,reduce=5")
    parser.add_argument("--steps", type=int, default=None, help="override the manifest's inner steps H")
    parser.add_argument("--payload", default=None, metavar="CODEC[:KEY=VALUE,...]",
                        help="override the manifest's payload codec, e.g. bf16, int8 or "
                             "sparse:chunk=4096,density=0.0625,bits=2 (README \"Payload codecs\")")
    parser.add_argument("--kill-restart", "--kill_restart", default=None, metavar="NAME@CYCLE",
                        help="SIGKILL a peer in the train phase of CYCLE and restart it (e.g. miner-0@1)")
    parser.add_argument("--late-miner", "--late_miner", type=int, default=None, metavar="CYCLE",
                        help="add an honest miner that starts only when CYCLE begins")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per peer (default 1)")
    parser.add_argument("--validation-data", "--validation_data", default=None, metavar="PATH",
                        help="held-out data for every validator when the manifest scores on private data (default "
                        "for the shipped math domain: fresh problems per validator from a secret seed)")
    parser.add_argument("--adversary-nice", "--adversary_nice", type=int, default=10, metavar="N",
                        help="run adversary processes at this nice level (default 10; 0 for none). A real attacker "
                             "computes on its own machine: on one shared machine its training and proofs of work "
                             "would otherwise slow the honest validators' clocks, which no remote attacker can do; "
                             "what it sends still reaches the honest peers in full")
    parser.add_argument("--metrics", action="store_true",
                        help="give every peer and the bootstrap node a Prometheus endpoint on 127.0.0.1 and write "
                             "their last scrape into report.json (`last_scrape`)")
    net = parser.add_argument_group("network (swarm.sim.lab; README, \"A swarm across a real network\")")
    net.add_argument("--network", choices=("loopback", "lab"), default="loopback",
                     help="loopback: every peer on 127.0.0.1 (default); lab: each peer on a host of its own in "
                          "network namespaces, validators and the bootstrap public, each miner behind a NAT "
                          "router (needs root, ip, tc, nft)")
    net.add_argument("--uplink", type=float, default=DEFAULT_UPLINK_MBIT, metavar="MBIT",
                     help=f"lab: each home's uplink cap in Mbit/s (default {DEFAULT_UPLINK_MBIT:g}: a tiny payload "
                          "then takes the share of the evaluate phase a 5 GB payload on 100 Mbit/s takes of a real "
                          "cycle; 0 for none)")
    net.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                     help="lab: percent of packets each home router drops, each way (default 0)")
    net.add_argument("--partition", action="append", default=[], metavar="HOSTS@CYCLE:SECONDS",
                     help="lab: cut these hosts (comma list of peer names, or bootstrap) off the internet when "
                          "CYCLE begins, heal them SECONDS later (repeatable)")
    net.add_argument("--kill-bootstrap", "--kill_bootstrap", type=int, default=None, metavar="CYCLE",
                     help="SIGKILL the bootstrap node when CYCLE (>= 1) begins")
    net.add_argument("--freeze", action="append", default=[], metavar="PEER@CYCLE:SECONDS",
                     help="SIGSTOP a peer (and its DHT and p2pd processes) when CYCLE begins, SIGCONT it SECONDS "
                          "later (repeatable)")
    args = parser.parse_args(argv)
    if args.partition and args.network != "lab":
        print("error: --partition needs --network lab (a partition takes a host's link down)", file=sys.stderr)
        return 2
    if args.uplink < 0 or not 0 <= args.loss < 100:
        print("error: --uplink must be >= 0 and --loss in [0, 100)", file=sys.stderr)
        return 2
    kinds = list(KINDS) if args.adversary == ["all"] else args.adversary
    unknown = [k for k in kinds if k not in KINDS + EXTRA]
    if unknown:
        print(f"error: unknown adversary {', '.join(unknown)}; choose from {', '.join(KINDS)} or all",
              file=sys.stderr)
        return 2
    baselines = _baselines(args.baseline)
    if baselines is None:
        print(f"error: --baseline {args.baseline}: choose all or a comma list of {','.join(BASELINES)}",
              file=sys.stderr)
        return 2
    args.baseline = baselines
    if not 0 <= args.light_miners <= args.miners:
        print(f"error: --light-miners {args.light_miners} must be from 0 to --miners ({args.miners})", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        if args.payload:  # checked before any work, as the manifest will check it
            from pydantic import ValidationError

            from swarm.protocol.manifest import PayloadSpec

            try:
                PayloadSpec(**payload_override(args.payload))
            except ValidationError as err:
                why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise SwarmError(f"--payload {args.payload}: {why}") from None
        return run(args, kinds, out)
    except SwarmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the peers started (they are stopped, and the lab removed, where they run)
        print("interrupted", file=sys.stderr)
        return 130


def _baselines(value: str | None) -> tuple[str, ...] | None:
    """The baselines a --baseline value names; () for none, None if it names an unknown one."""
    if value is None:
        return ()
    names = BASELINES if value == "all" else tuple(v.strip() for v in value.split(",") if v.strip())
    return names if names and set(names) <= set(BASELINES) else None


def run(args, kinds: list[str], out: Path) -> int:
    if out.exists() and any(out.iterdir()):
        raise SwarmError(f"--out {out} exists and is not empty: choose a new directory")

    def on_sigterm(*_):  # a SIGTERM (kill, timeout, a supervisor) stops every peer as Ctrl-C does, never orphans them
        raise KeyboardInterrupt  # (and removes the lab's namespaces)

    signal.signal(signal.SIGTERM, on_sigterm)
    lab = Lab() if args.network == "lab" else None
    try:
        return _run(args, kinds, out, lab)
    finally:
        if lab is not None:
            lab.close()


def build_run_pack(template: Path, out: Path) -> Path:
    """The miner pack of the template's base model and expert map, 4-bit background, written under out/pack/."""
    import yaml

    from teft.model import BUILTIN_MODELS
    from teft.pack import build_pack, write_pack
    from teft.selection import ExpertMap

    raw = yaml.safe_load(template.read_text())  # a template: no allowlist yet, so not a manifest to load
    emap, model = (raw.get("expert_map") or {}).get("path"), raw["base_model"]["path"]
    if not emap:
        raise SwarmError(f"--light-miners: {template} names no expert_map.path, and a pack holds one map's experts")
    model = model if model in BUILTIN_MODELS else str(template.parent / model)
    return write_pack(build_pack(model, ExpertMap.load(template.parent / emap), "4bit",
                                 raw["base_model"].get("dtype", "auto")), out / "pack")


def _run(args, kinds: list[str], out: Path, lab: Lab | None) -> int:
    from tqdm import tqdm

    from swarm.protocol.manifest import load

    if out.exists() and any(out.iterdir()):
        raise SwarmError(f"--out {out} exists and is not empty: choose a new directory")
    if lab is not None:
        lab.start()
    swarm = Swarm(out, threads=args.threads, metrics=args.metrics, adversary_nice=args.adversary_nice, lab=lab,
                  uplink_mbit=args.uplink or None, loss_pct=args.loss)
    for i in range(args.validators):
        swarm.add(f"validator-{i}", "validator")
    for i in range(args.miners):
        light = i >= args.miners - args.light_miners
        swarm.add(f"miner-{i}{'-light' if light else ''}", "miner", background="4bit" if light else "bf16")
    for kind in kinds:
        role = role_kind(kind)
        swarm.add(f"{role}-{kind}", role, kind)
    if args.late_miner is not None:
        swarm.add("miner-latecomer", "miner", start_cycle=args.late_miner)
    overrides: dict = {}
    if args.timings:
        overrides["timings"] = {k: float(v) for k, v in (item.split("=") for item in args.timings.split(","))}
    if args.steps:
        overrides["inner"] = {"steps": args.steps}
    if args.payload:
        overrides["payload"] = payload_override(args.payload)
    if args.light_miners:  # the run pins a pack: the validators serve it, the light miners fetch it at startup
        from swarm.launch import pack_spec

        swarm.pack = build_run_pack(Path(args.config), out)
        overrides["pack"] = pack_spec(swarm.pack.read_bytes())
    faults = parse_faults(args.partition, args.kill_bootstrap, args.freeze,
                          {p.name for p in swarm.peers} | {"bootstrap"})
    start_in = args.start_in if args.start_in is not None else 30 + 8 * len(swarm.peers)
    swarm.write_manifest(Path(args.config), time.time() + start_in, overrides)
    manifest = load(swarm.manifest_path)
    if manifest.data.private_validation:
        give_private_data(swarm, manifest, args.validation_data)
    clock = manifest.clock()
    kill_name, kill_cycle = (args.kill_restart.split("@") + ["1"])[:2] if args.kill_restart else (None, None)
    killed = False
    interrupted = False
    last_scrape: dict = {}
    print(f"simulating {len(swarm.peers)} peers for {args.cycles} cycles of {clock.cycle_length:.0f}s; "
          f"logs in {out / 'logs'}", flush=True)
    try:
        swarm.start_bootstrap()
        for peer in swarm.peers:
            if peer.start_cycle == 0:
                swarm.start_peer(peer)
        end = clock.cycle_start(args.cycles) + 3.0
        tty = sys.stderr.isatty()
        bar = tqdm(total=args.cycles, unit="cycle", desc="swarm", disable=not tty)
        done, last_status = 0, ""
        while time.time() < end:
            pos = clock.where(time.time())
            for peer in swarm.peers:
                if peer.proc is None and pos.cycle >= peer.start_cycle > 0:
                    swarm.start_peer(peer)
            for fault in faults:
                now = time.time()
                if fault.started is None and pos.cycle >= fault.cycle:
                    swarm.apply(fault, now)
                    print(f"fault: {fault.describe()}: {'; '.join(fault.notes)}", file=sys.stderr, flush=True)
                elif fault.seconds and fault.ended is None and fault.started is not None \
                        and now >= fault.started + fault.seconds:
                    swarm.undo(fault, now)
                    print(f"fault over: {fault.describe()}: {fault.notes[-1]}", file=sys.stderr, flush=True)
            if kill_name and not killed and pos.cycle == int(kill_cycle) and pos.phase == "train" \
                    and pos.seconds_into_phase > 2:
                victim = next(p for p in swarm.peers if p.name == kill_name)
                swarm.kill(victim)
                victim.restarts.append(f"SIGKILL in cycle {pos.cycle} phase {pos.phase}")
                swarm.start_peer(victim)
                killed = True
            finished = max(min(pos.cycle, args.cycles), 0) if pos.cycle >= 0 else 0
            if finished > done:
                bar.update(finished - done)
                done = finished
            phase = pos.phase if pos.cycle >= 0 else f"genesis in {pos.seconds_left_in_phase:.0f}s"
            status = f"cycle {max(pos.cycle, 0)} {phase}, {swarm.alive()}/{len(swarm.peers)} peers alive"
            bar.set_postfix_str(status)
            if not tty and pos.phase != last_status and pos.cycle >= 0:  # a log, not a bar, when not on a terminal
                print(status, file=sys.stderr, flush=True)
                last_status = pos.phase
            time.sleep(0.5)
        bar.update(args.cycles - done)
        bar.close()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping every peer", file=sys.stderr)
    finally:
        if args.metrics:
            last_scrape = swarm.scrape()
        swarm.stop()
    from swarm.protocol.runtime import load_runtime
    from swarm.sim.report import build_report, fault_rows, write_outputs

    rt = load_runtime(manifest)
    dense_bytes = sum(p.numel() * 4 for p in rt.model.parameters())  # what a dense fp32 exchange would send
    baseline = None
    if args.baseline and not interrupted:
        from swarm.sim.baseline import run_baselines

        baseline = run_baselines(rt, cycles=args.cycles, miners=args.miners, which=args.baseline)
    report = build_report(swarm, args.cycles, rt.payload_size, dense_bytes, baseline)
    report["measured_on"] = rt.report_source
    report["network"] = {"kind": args.network, "uplink_mbit": args.uplink if lab else None,
                         "loss_pct": args.loss if lab else None,
                         "hosts": {p.name: {"address": p.host.address, "public": p.host.public, "wan": p.host.wan}
                                   for p in swarm.peers if p.host is not None}}
    report["faults"] = fault_rows(report, faults, clock, {(kill_name, int(kill_cycle))} if killed else set())
    report["payload_codec"] = rt.codec.spec.label()
    if args.metrics:
        report["last_scrape"] = last_scrape
    write_outputs(report, out)
    print((out / "summary.md").read_text())
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
