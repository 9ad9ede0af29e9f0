"""Public keys as text: what a manifest lists and a record names. Light on purpose (no hivemind, no
torch), so a manifest is checked before anything slow is imported."""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from swarm.errors import SwarmError


def normalize_public_key(public_key: bytes | str) -> str:
    """Drop comments and whitespace so keys compare equal however they were pasted."""
    text = public_key.decode(errors="replace") if isinstance(public_key, bytes) else public_key
    return " ".join(text.split()[:2])


def check_public_key(public_key: bytes | str) -> rsa.RSAPublicKey:
    """The OpenSSH RSA public key this text holds, with a readable error for anything else."""
    text = normalize_public_key(public_key)
    try:
        key = serialization.load_ssh_public_key(text.encode())
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"a {type(key).__name__}, not RSA")
        return key
    except (ValueError, TypeError, IndexError, UnsupportedAlgorithm) as e:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise SwarmError(
            f"'{shown}' is not an RSA public key ({e}): copy the line printed by python -m swarm.keygen"
        ) from None
