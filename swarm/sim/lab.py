"""A network lab in the kernel: each peer on a host of its own, miners behind NAT on capped, lossy home uplinks.

Every run so far had all peers on 127.0.0.1: every peer dialable, loopback speed, no loss. The lab builds what a
swarm's users have, out of Linux network namespaces (root only):

    internet   one namespace holding a bridge; public hosts (bootstrap nodes, validators) and the home routers
               plug into it with veth pairs, addresses in 10.77.0.0/16 (why not a benchmark range: PUBLIC_PREFIX)
    public     a namespace per host, one address on the bridge, no default route (nothing but the lab exists)
    home       a namespace per miner, 192.168.1.2/24 in every home (like real homes), default route via its
               router namespace, which masquerades the home onto its public address with nftables and lets
               nothing in that the home did not ask for; the router's uplink is capped with tc tbf, and a
               `numgen random` rule drops the given share of packets both ways

Partitions take a host's (or its router's) link to the bridge down and up again. `tc netem` is not in this
kernel, so there is no delay emulation: latency is the kernel's, microseconds; a capped uplink's queue (tbf)
is the only delay a packet meets.

Every namespace is named teftlab-<pid>-<host> (links and bridges inside them start with teftlab too), so
`close()` (also run at exit) and `sweep_stale()` (namespaces whose creating pid is gone) remove all of them;
the host's own namespace, routes, firewall and loopback are never touched.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from swarm.errors import SwarmError

PREFIX = "teftlab"
# the lab's internet is 10.77.0.0/16. Not 198.18.0.0/15 (set aside for benchmarks): libp2p's DHT takes an
# address into its WAN table only if public and into its LAN table only if private, and 198.18/15 is neither, so
# p2pd found no peer by id ('routing: not found') and the hivemind DHT became a star around the bootstrap node
PUBLIC_PREFIX = "10.77"
HOME_ADDRESS, HOME_GATEWAY = "192.168.1.2", "192.168.1.1"
BRIDGE, ETH, WAN, LAN = f"{PREFIX}-br", f"{PREFIX}-eth0", f"{PREFIX}-wan", f"{PREFIX}-lan"


@dataclass
class Host:
    """One peer's machine: its namespace and its own address (a home host's is private, behind `router`)."""

    name: str
    ns: str
    address: str
    public: bool
    router: str | None = None  # the home router's namespace
    wan: str | None = None  # the router's public address (what others see a home host's connections come from)
    port: str = ""  # its (or its router's) link on the bridge, in the internet namespace
    uplink_mbit: float | None = None
    loss_pct: float = 0.0

    def wrap(self, cmd: list[str]) -> list[str]:
        """The command run inside this host's namespace (ip netns exec replaces itself with the command)."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def maddr(self, port: int = 0) -> str:
        return f"/ip4/{self.address}/tcp/{port}"


def _run(*cmd: str, stdin: str | None = None) -> None:
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        why = " ".join((result.stderr or result.stdout).split()) or f"exit {result.returncode}"
        raise SwarmError(f"network lab: `{' '.join(cmd)}` failed: {why}")


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def require() -> None:
    """Raise a one-line SwarmError unless this machine can build the lab: root, ip, tc, nft (nftables is
    installed with apt-get when running as root and missing)."""
    if os.geteuid() != 0:
        raise SwarmError("the network lab needs root (it creates network namespaces, NAT rules and traffic caps): "
                         "run it as root, or drop --network lab to run on 127.0.0.1")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise SwarmError(f"the network lab needs `{tool}` (iproute2): apt-get install iproute2")
    if shutil.which("nft") is None:
        try:
            subprocess.run(["apt-get", "install", "-y", "-qq", "nftables"], capture_output=True, timeout=300,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired):
            pass
        if shutil.which("nft") is None:
            raise SwarmError("the network lab needs `nft` for NAT and loss, and apt-get could not install it: "
                             "apt-get update && apt-get install nftables")


def sweep_stale() -> list[str]:
    """Delete lab namespaces left by a lab whose process is gone (kill -9); returns their names."""
    gone = []
    for ns in _namespaces():
        parts = ns.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            _kill_inside(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            gone.append(ns)
    return gone


def _kill_inside(ns: str) -> None:
    """SIGKILL what still runs in one of the lab's namespaces (it would keep the namespace alive)."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class Lab:
    """The namespaces of one run. Use as a context manager, or call close(): it is also run at exit."""

    def __init__(self, tag: str | None = None):
        self.tag = tag or str(os.getpid())
        self.inet = f"{PREFIX}-{self.tag}-inet"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        self._ports = 0
        self._closed = False

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.close()

    def start(self) -> Lab:
        """Check the machine, clear stale labs, and build the internet: a namespace with a bridge."""
        require()
        sweep_stale()
        atexit.register(self.close)
        self._netns(self.inet)
        _run("ip", "-n", self.inet, "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "-n", self.inet, "link", "set", BRIDGE, "up")
        return self

    def _netns(self, ns: str) -> None:
        if ns in _namespaces():
            raise SwarmError(f"network lab: namespace {ns} exists already; is another lab of this process running?")
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _plug(self, ns: str, inside: str, address: str) -> str:
        """A veth from `ns` (named `inside`, holding `address`) to the bridge; returns the bridge side's name."""
        self._ports += 1
        port = f"{PREFIX}-p{self._ports}"
        _run("ip", "link", "add", port, "netns", self.inet, "type", "veth", "peer", "name", inside, "netns", ns)
        _run("ip", "-n", self.inet, "link", "set", port, "master", BRIDGE)
        _run("ip", "-n", self.inet, "link", "set", port, "up")
        _run("ip", "-n", ns, "addr", "add", f"{address}/16", "dev", inside)
        _run("ip", "-n", ns, "link", "set", inside, "up")
        return port

    def _name(self, name: str) -> str:
        if name in self.hosts:
            raise SwarmError(f"network lab: host {name} exists already")
        if not name.replace("-", "").isalnum():
            raise SwarmError(f"network lab: host name {name!r} must be letters, digits and dashes")
        return f"{PREFIX}-{self.tag}-{name}"

    def add_public(self, name: str) -> Host:
        """A host on the internet bridge with a public address anyone in the lab can dial."""
        ns = self._name(name)
        self._netns(ns)
        count = sum(1 for h in self.hosts.values() if h.public)
        address = f"{PUBLIC_PREFIX}.0.{10 + count}"
        host = Host(name, ns, address, public=True)
        host.port = self._plug(ns, ETH, address)
        self.hosts[name] = host
        return host

    def add_home(self, name: str, uplink_mbit: float | None = None, loss_pct: float = 0.0) -> Host:
        """A host in a home network of its own behind a NAT router: it can dial out, nobody can dial in; the
        router's uplink carries at most `uplink_mbit` and drops `loss_pct` percent of packets each way."""
        ns = self._name(name)
        router = f"{ns}-nat"
        count = sum(1 for h in self.hosts.values() if not h.public)
        wan = f"{PUBLIC_PREFIX}.1.{10 + count}"
        self._netns(router)
        self._netns(ns)
        port = self._plug(router, WAN, wan)
        _run("ip", "link", "add", LAN, "netns", router, "type", "veth", "peer", "name", ETH, "netns", ns)
        _run("ip", "-n", router, "addr", "add", f"{HOME_GATEWAY}/24", "dev", LAN)
        _run("ip", "-n", router, "link", "set", LAN, "up")
        _run("ip", "-n", ns, "addr", "add", f"{HOME_ADDRESS}/24", "dev", ETH)
        _run("ip", "-n", ns, "link", "set", ETH, "up")
        _run("ip", "-n", ns, "route", "add", "default", "via", HOME_GATEWAY)
        _run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _run("ip", "netns", "exec", router, "nft", "-f", "-", stdin=nat_rules(loss_pct))
        if uplink_mbit:
            _run("ip", "netns", "exec", router, "tc", "qdisc", "add", "dev", WAN, "root", "tbf",
                 *tbf_args(uplink_mbit))
        host = Host(name, ns, HOME_ADDRESS, public=False, router=router, wan=wan, port=port,
                    uplink_mbit=uplink_mbit, loss_pct=loss_pct)
        self.hosts[name] = host
        return host

    def partition(self, name: str) -> None:
        """Cut a host (a home host: its router) off the internet; connections stall, new dials fail."""
        _run("ip", "-n", self.inet, "link", "set", self.hosts[name].port, "down")

    def heal(self, name: str) -> None:
        """Put a cut host back. The dials it (or anyone) tried while cut left failed neighbour (ARP) entries
        behind, on which the next connection got "No route to host" at once: those are forgotten too."""
        port = self.hosts[name].port
        _run("ip", "-n", self.inet, "link", "set", port, "up")
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and "state UP" not in subprocess.run(
                ["ip", "-n", self.inet, "link", "show", port], capture_output=True, text=True, timeout=30).stdout:
            time.sleep(0.05)
        for ns in self._made:
            subprocess.run(["ip", "-n", ns, "neigh", "flush", "all"], capture_output=True, timeout=30)

    def namespaces(self) -> list[str]:
        """The lab's namespaces that exist right now."""
        return [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}-{self.tag}-")]

    def close(self) -> None:
        """Remove every namespace this lab made (and with them their links, rules and caps); idempotent."""
        if self._closed:
            return
        self._closed = True
        for ns in reversed(self._made):
            _kill_inside(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made.clear()
        atexit.unregister(self.close)


def nat_rules(loss_pct: float) -> str:
    """A home router's nftables: masquerade the home onto the WAN address, let in only what the home asked for
    (a real router drops an unsolicited dial: it times out, it is not refused), drop `loss_pct`% each way."""
    loss = f"numgen random mod 10000 < {int(round(loss_pct * 100))} drop" if loss_pct > 0 else ""
    return f"""
table ip {PREFIX} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        {loss}
        iifname "{LAN}" oifname "{WAN}" accept
        iifname "{WAN}" oifname "{LAN}" ct state established,related accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{WAN}" ct state established,related accept
        iifname "{WAN}" drop
    }}
}}
"""


def tbf_args(mbit: float) -> list[str]:
    """tc tbf arguments for an uplink of `mbit`: a burst of 1/50 s at that rate (at least 16 KiB) and at most
    200 ms of queue, as a home router's buffer."""
    burst = max(int(mbit * 1e6 / 8 / 50), 16 * 1024)
    return ["rate", f"{mbit}mbit", "burst", str(burst), "latency", "200ms"]
