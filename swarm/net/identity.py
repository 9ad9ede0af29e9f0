"""Persistent peer identity: one RSA key signs DHT records and names the libp2p peer."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import base58
import multihash
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from swarm.errors import SwarmError
from swarm.net.keys import canonical_public_key, load_public_key, normalize_public_key
from teft.files import atomic_write

logger = logging.getLogger(__name__)

P2P_SUFFIX = ".p2p"
MAX_SUBKEY_BYTES = 1024  # `[owner:` + a canonical 4096-bit key + `]` is 732 bytes


@dataclass(frozen=True)
class Identity:
    """A peer's keys; the same RSA key signs records and is the libp2p identity, so an
    owner key found in a record names exactly one peer id to fetch payloads from."""

    path: Path
    private_key: RSAPrivateKey
    public_key: bytes  # OpenSSH form ("ssh-rsa AAAA..."), what manifests list as validators
    subkey: bytes  # b"[owner:ssh-rsa ...]": the DHT subkey that RSASignatureValidator protects
    peer_key: str  # base58 libp2p peer id derived from public_key
    p2p_identity_path: Path  # libp2p key file for DHT(identity_path=...)

    @property
    def public_key_str(self) -> str:
        """Text form for manifests and logs."""
        return self.public_key.decode()


def owner_subkey(public_key: bytes | str) -> bytes:
    """Wrap a public key in the marker RSASignatureValidator looks for."""
    key = public_key.encode() if isinstance(public_key, str) else public_key
    return RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", normalize_public_key(key).encode())


def public_key_from_subkey(subkey: object) -> str | None:
    """The owner public key of a DHT subkey that is exactly `[owner:<canonical key>]`, else None.

    The one owner-marker rule: validation.OwnerKeyCheck and SchemaCheck apply it before storing (and before
    any signature is checked) and get_records on read, so a subkey accepted by one is never dropped by the
    other. Canonical (swarm.net.keys.canonical_public_key): the key's one OpenSSH encoding, exponent 65537,
    2048-4096 bits; every other encoding of a key would be another subkey of the same owner.
    """
    if not isinstance(subkey, bytes) or len(subkey) > MAX_SUBKEY_BYTES:
        return None
    found = RSASignatureValidator._PUBLIC_KEY_RE.fullmatch(subkey)
    if not found:
        return None
    try:
        key = found.group(1).decode("ascii")
    except UnicodeDecodeError:
        return None
    return key if canonical_public_key(key) else None


def parse_public_key(public_key: bytes | str) -> RSAPublicKey:
    """Load an OpenSSH RSA public key as hivemind's wrapper, with a readable error for anything else.

    Any encoding parses: whether a key may own records is public_key_from_subkey's question."""
    return RSAPublicKey(load_public_key(public_key))


@functools.lru_cache(maxsize=1024)  # a peer reads the same few owners' records every second
def peer_key_of(public_key: bytes | str) -> str:
    """The libp2p peer id (base58) that belongs to an OpenSSH RSA public key."""
    key = parse_public_key(public_key)
    der = key._public_key.public_bytes(
        encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    digest = multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256"))
    return base58.b58encode(digest).decode()


def _wrap(key: rsa.RSAPrivateKey) -> RSAPrivateKey:
    """Build hivemind's key wrapper around an existing key (its constructor always generates)."""
    wrapped = RSAPrivateKey.__new__(RSAPrivateKey)
    wrapped._private_key = key
    return wrapped


def _p2p_identity_bytes(key: RSAPrivateKey) -> bytes:
    """The libp2p key file format that hivemind's P2P.generate_identity writes."""
    return crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=key.to_bytes()).SerializeToString()


def load_or_create(path: str | os.PathLike) -> Identity:
    """Load the peer's key from `path` (PEM), creating it on first use, so restarts keep the peer id."""
    path = Path(path)
    if path.is_dir():
        raise SwarmError(f"{path} is a folder, not a key file: name a file in it, e.g. {path / 'peer.key'}")
    if not path.parent.is_dir():
        raise SwarmError(f"directory {path.parent} for the identity file does not exist: create it first")
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as e:
            raise SwarmError(f"cannot read the key file {path} ({e.strerror}): check its permissions") from None
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise SwarmError(f"{path} is not a PEM private key ({e}): restore it or move it away") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SwarmError(f"{path} holds a non-RSA key: generate one with python -m swarm.keygen")
        if path.stat().st_mode & 0o077:
            logger.warning("identity file %s is readable by other users; run chmod 600 on it", path)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
        try:
            atomic_write(path, pem, mode=0o600, exclusive=True)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create(path)
        logger.info("created identity %s", path)
    private_key = _wrap(key)
    public_key = private_key.get_public_key().to_bytes()

    p2p_path = path.with_name(path.name + P2P_SUFFIX)
    p2p_bytes = _p2p_identity_bytes(private_key)
    if not p2p_path.exists() or p2p_path.read_bytes() != p2p_bytes:
        atomic_write(p2p_path, p2p_bytes, mode=0o600)
    return Identity(
        path=path,
        private_key=private_key,
        public_key=public_key,
        subkey=owner_subkey(public_key),
        peer_key=peer_key_of(public_key),
        p2p_identity_path=p2p_path,
    )
