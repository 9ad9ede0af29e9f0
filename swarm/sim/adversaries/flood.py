"""Sybil floods: one process commits and reveals under many throwaway keys, every cycle (sybil-flood), or
commits under all of them and reveals only those the validators' seeds put first (seed-grinder).

Keys cost nothing, so an outsider can bring as many miners as it likes. Each throwaway key's records are
validly signed by that key: the role hands its DHT node a validator that signs for every key it holds
(hivemind's RSASignatureValidator signs only for its own), through `Role.record_validators`. The payload
hashes it reveals are never served, so all a validator can do with them is spend its budget trying.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import socket
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.serializer import MSGPackSerializer

from swarm import VERSION
from swarm.net import records
from swarm.net.identity import Identity, _wrap, owner_subkey, peer_key_of
from swarm.net.validation import SchemaCheck
from swarm.net.work import solve
from swarm.protocol.cyclelog import Cycle
from swarm.roles.miner import Miner
from swarm.roles.validator import FETCHES_PER_SLOT, combined_seed
from teft.files import atomic_write

SYBILS_ENV = "TEFT_SYBILS"  # how many throwaway keys a flood uses
DEFAULT_SYBILS = 200
GRINDER_KEYS_ENV, DEFAULT_GRINDER_KEYS = "TEFT_GRINDER_KEYS", 64  # a seed-grinder's keys: each announces a listener
_PEM_END = b"-----END PRIVATE KEY-----\n"
# multiprocessing writes a message over 16 KiB in two parts, and hivemind's DHT process reads its pipe
# without blocking: a larger call can be read half-way and kill the node ("Resource temporarily unavailable")
PIPE_MESSAGE_BYTES = 12_000


def grinder_count() -> int:
    """Throwaway keys of a seed-grinder: $TEFT_GRINDER_KEYS, else 64."""
    return int(os.environ.get(GRINDER_KEYS_ENV, DEFAULT_GRINDER_KEYS))


def sybil_count() -> int:
    """Throwaway keys per flooding process: $TEFT_SYBILS, else 200."""
    return int(os.environ.get(SYBILS_ENV, DEFAULT_SYBILS))


@dataclass(frozen=True)
class Throwaway:
    """One Sybil: a key that signs its own records and names a peer id that serves nothing."""

    private_key: RSAPrivateKey
    subkey: bytes  # what records.store_record needs of an identity
    peer_key: str


def crossed_keys(n: int) -> list[rsa.RSAPrivateKey]:
    """n distinct, valid 2048-bit RSA keys with e=65537, cheaply: the primes of a few generated keys, multiplied
    in pairs (about 0.15 s a base key instead of per key). Honest nodes accept only canonical 2048-4096-bit
    keys, so a flood's keys must be full-size; crossing primes is how an attacker gets them for free."""
    primes: list[int] = []
    while len(primes) * (len(primes) - 1) // 2 < n:
        numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
        primes += [numbers.p, numbers.q]
    keys = []
    for i, p in enumerate(primes):
        for q in primes[i + 1:]:
            if len(keys) == n:
                return keys
            modulus = p * q
            if modulus.bit_length() != 2048:
                continue
            d = pow(65537, -1, (p - 1) * (q - 1))
            keys.append(rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                              rsa.rsa_crt_iqmp(p, q),
                                              rsa.RSAPublicNumbers(65537, modulus)).private_key(
                unsafe_skip_rsa_key_validation=True))  # built from checked primes: skip the slow check
    return keys + crossed_keys(n - len(keys)) if len(keys) < n else keys


def throwaway_keys(identity: Identity, n: int) -> list[Throwaway]:
    """n 2048-bit keys kept next to the identity file, so a restarted flood floods under the same keys."""
    path = identity.path.with_name(identity.path.name + ".sybils")
    pems = [p + _PEM_END for p in path.read_bytes().split(_PEM_END) if p.strip()] if path.exists() else []
    keys = [serialization.load_pem_private_key(p, password=None) for p in pems[:n]]
    if len(keys) < n or any(k.key_size != 2048 for k in keys):  # keys of an older, smaller kind: made anew
        keys = crossed_keys(n)
        atomic_write(path, b"".join(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()) for k in keys), mode=0o600)
    out = []
    for key in keys:
        wrapped = _wrap(key)
        public = wrapped.get_public_key().to_bytes()
        out.append(Throwaway(wrapped, owner_subkey(public), peer_key_of(public)))
    return out


class MultiKeySigner(RecordValidatorBase):
    """Signs a record with whichever of its keys the subkey names; validates like RSASignatureValidator."""

    def __init__(self, keys: list[RSAPrivateKey]):
        self.signers = {}
        for key in keys:
            signer = RSASignatureValidator(key)
            self.signers[signer.local_public_key] = signer
        self.any = next(iter(self.signers.values()))

    def validate(self, record: DHTRecord) -> bool:
        return self.any.validate(record)  # checks the record's own key's signature, whoever holds this validator

    def sign_value(self, record: DHTRecord) -> bytes:
        found = RSASignatureValidator._PUBLIC_KEY_RE.search(record.subkey or b"")
        signer = self.signers.get(RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", found.group(1))) \
            if found else None
        return signer.sign_value(record) if signer is not None else record.value

    def strip_value(self, record: DHTRecord) -> bytes:
        return self.any.strip_value(record)

    @property
    def priority(self) -> int:
        return 10  # where RSASignatureValidator runs: before the schema check reads the value

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return False


async def _store_many(key: str, entries: list[tuple[dict, bytes]], expiration: float, _dht, node) -> int:
    """In the DHT process: every (value, subkey) under one key in one request per holder."""
    done = await node.store_many([key] * len(entries), [v for v, _ in entries], expiration,
                                 subkeys=[s for _, s in entries])
    return sum(bool(ok) for ok in done.values())


def store_as(dht, key: str, entries: list[tuple[dict, bytes]], expiration: float) -> int:
    """Store (value, owner subkey) pairs under one key; the DHT node signs each with its owner's key."""
    run = getattr(dht, "run_coroutine", None)
    if run is None:  # the tests' in-memory DHT: one store each
        return sum(bool(dht.store(key, v, expiration, subkey=s)) for v, s in entries)
    stored, batch, size = 0, [], 0
    for value, subkey in entries:
        batch.append((value, subkey))
        size += len(MSGPackSerializer.dumps(value)) + len(subkey) + 64
        if size > PIPE_MESSAGE_BYTES:
            stored += run(functools.partial(_store_many, key, batch, expiration))
            batch, size = [], 0
    if batch:
        stored += run(functools.partial(_store_many, key, batch, expiration))
    return stored


class SybilFlood(Miner):
    """Every cycle: N throwaway keys commit and reveal payload hashes that nobody serves."""

    @staticmethod
    def count() -> int:
        """How many throwaway keys it uses."""
        return sybil_count()

    @classmethod
    def record_validators(cls, identity: Identity, run_id: str, horizon) -> list:
        keys = [identity.private_key] + [t.private_key for t in throwaway_keys(identity, cls.count())]
        return [MultiKeySigner(keys), SchemaCheck(run_id=run_id, horizon=horizon)]

    def __init__(self, peer):
        super().__init__(peer)
        self.sybils = throwaway_keys(peer.identity, self.count())
        self.fakes: dict[str, str] = {}  # sybil peer key -> this cycle's payload hash
        self.work: dict[str, int] = {}  # sybil peer key -> the proof-of-work nonce of its commit

    def on_sync(self, cycle: Cycle) -> None:
        """Every other throwaway key announces this process's own addresses, so that validators try to fetch
        from it (the libp2p handshake then fails: the daemon there has another peer id); the rest announce
        nothing and are refused before any fetch."""
        super().on_sync(cycle)
        maddrs = records.announceable(self.peer.net.maddrs)
        self.flood(cycle, "peers", lambda t: records.PeerRecord(role="miner", version=VERSION, maddrs=maddrs),
                   self.sybils[::2])

    def on_train(self, cycle: Cycle) -> None:
        """Fake payload hashes, and each key's proof of work, paid as an honest miner pays it, for as many keys
        as it can until the commit phase ends: keys without it would be refused before any fetch."""
        if not cycle.fresh:
            return
        p, c = self.peer, cycle.number
        self.fakes, self.work = {}, {}
        deadline = time.monotonic() + max(p.clock.phase_end(c, "commit") - 1.0 - p.now(), 0.0)
        for t in self.sybils:
            fake = secrets.token_hex(32)
            nonce = solve(records.commit_digest(p.run_id, c, t.peer_key, fake), p.manifest.commit_work_bits,
                          p.stop.is_set, deadline)
            if nonce is None:
                break
            self.fakes[t.peer_key], self.work[t.peer_key] = fake, nonce
        cycle.log.note += f"proof of work for {len(self.fakes)} of {len(self.sybils)} keys; "

    def on_commit(self, cycle: Cycle) -> None:
        if self.fakes:
            p, c = self.peer, cycle.number
            self.flood(cycle, "commit", lambda t: records.CommitRecord(
                digest=records.commit_digest(p.run_id, c, t.peer_key, self.fakes[t.peer_key]),
                nonce=self.work[t.peer_key]), [t for t in self.sybils if t.peer_key in self.fakes])

    def on_reveal(self, cycle: Cycle) -> None:
        if self.fakes:
            size = self.peer.rt.payload_size
            self.flood(cycle, "reveal", lambda t: records.RevealRecord(payload_hash=self.fakes[t.peer_key],
                                                                       size=size, nonce=self.work[t.peer_key]),
                       [t for t in self.sybils if t.peer_key in self.fakes])

    def flood(self, cycle: Cycle, kind: str, make, keys: list[Throwaway] | None = None) -> None:
        p, number = self.peer, cycle.number
        keys = self.sybils if keys is None else keys
        entries = [(records.make_value(p.run_id, number, kind, make(t)), t.subkey) for t in keys]
        stored = store_as(p.dht, records.record_key(p.run_id, number, kind), entries, p.clock.cycle_start(number + 3))
        cycle.log.note += f"{kind}: {stored} of {len(entries)} sybil records stored; "


class SeedGrinder(SybilFlood):
    """A flood that reveals selectively: every throwaway key commits, and once the validators' seeds are out it
    reveals only the keys the combined seed orders first (as many as a validator tries), each announced at an
    address of its own that accepts TCP and never speaks, so every try costs a validator a stalled dial.

    Committing is free and revealing optional, so without a reveal deadline before the seeds are known the
    order validators fetch in would be the attacker's choice; with it, these reveals come too late to count.
    """

    @staticmethod
    def count() -> int:
        return grinder_count()

    def __init__(self, peer):
        super().__init__(peer)
        self.listeners: list[socket.socket] = []

    def on_sync(self, cycle: Cycle) -> None:
        Miner.on_sync(self, cycle)
        if not self.listeners:  # the kernel completes the handshake from the backlog; nobody ever accepts
            for _ in self.sybils:
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sock.listen(64)
                self.listeners.append(sock)
        p = self.peer
        entries = [(records.make_value(p.run_id, cycle.number, "peers", records.PeerRecord(
            role="miner", version=VERSION, maddrs=[f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}"])), t.subkey)
            for t, sock in zip(self.sybils, self.listeners, strict=True)]
        store_as(p.dht, records.record_key(p.run_id, cycle.number, "peers"), entries,
                 p.clock.cycle_start(cycle.number + 3))

    def on_reveal(self, cycle: Cycle) -> None:
        if not self.fakes:
            return
        p, c = self.peer, cycle.number
        seed = self.wait_for_seeds(c)
        if seed is None:
            cycle.log.note += "no validator seed seen in the reveal phase; revealed nothing; "
            return
        mine = {t.peer_key for t in self.sybils} | {p.me}
        place = {pid: hashlib.sha256(seed + pid.encode()).digest() for pid in p.get(c, "commit")}
        first_honest = min((h for pid, h in place.items() if pid not in mine), default=None)
        ranked = sorted((t for t in self.sybils if t.peer_key in self.fakes),
                        key=lambda t: hashlib.sha256(seed + t.peer_key.encode()).digest())
        ahead = [t for t in ranked if first_honest is None or
                 hashlib.sha256(seed + t.peer_key.encode()).digest() < first_honest]  # tried before any honest one
        chosen = (ahead or ranked)[:FETCHES_PER_SLOT * p.manifest.max_submissions]
        size = p.rt.payload_size
        self.flood(cycle, "reveal", lambda t: records.RevealRecord(payload_hash=self.fakes[t.peer_key], size=size,
                                                                   nonce=self.work[t.peer_key]), chosen)

    def wait_for_seeds(self, c: int) -> bytes | None:
        """The combined evaluation seed, computed as validators do, once every allowlisted validator that
        committed a seed has revealed it (or at the end of the reveal phase with what is out by then)."""
        p = self.peer
        allowlist = set(p.manifest.validators)
        end = p.clock.phase_end(c, "reveal")
        seeds: dict[str, str] = {}
        while not p.stop.is_set() and p.now() < end - 0.2:
            commits = {pid: s for pid, s in p.get(c, "seed-commit").items() if s.owner in allowlist}
            reveals = p.get(c, "seed-reveal")
            seeds = {pid: reveals[pid].record.seed for pid, commit in commits.items() if pid in reveals
                     and records.seed_digest(reveals[pid].record.seed, c, pid) == commit.record.digest}
            if commits and len(seeds) == len(commits):
                break
            p.wait_until(min(p.now() + 0.25, end - 0.2))
        return combined_seed(seeds) if seeds else None
