"""Public keys as text: what a manifest lists and a record names. Light on purpose (no hivemind, no
torch), so a manifest is checked before anything slow is imported.

One key, one encoding: an OpenSSH RSA key text has many encodings of the same key (mpints padded with
leading zeros, other base64 of the same bytes), and every one of them parses to the same key and peer id.
A key text counts as an owner only in its canonical form (`canonical_public_key`): exactly what
cryptography re-serialises the parsed key to, with exponent 65537 and a 2048-, 3072- or 4096-bit modulus.
Anything else would let one owner hold many records under one key, or make every reader run an RSA check
with a huge exponent.
"""

from __future__ import annotations

import functools

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from swarm.errors import SwarmError

PUBLIC_EXPONENT = 65537
MODULUS_BITS = (2048, 3072, 4096)  # swarm.keygen writes 2048
# "ssh-rsa " + base64 of a 4096-bit key is 724 characters: anything longer is not canonical, unparsed
MAX_KEY_TEXT = 800


def normalize_public_key(public_key: bytes | str) -> str:
    """Drop comments and whitespace so keys compare equal however they were pasted."""
    text = public_key.decode(errors="replace") if isinstance(public_key, bytes) else public_key
    return " ".join(text.split()[:2])


def _load_rsa(text: str) -> rsa.RSAPublicKey:
    """Parse `ssh-rsa AAAA...` (already normalised) or raise ValueError naming the problem."""
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except (ValueError, TypeError, IndexError, UnsupportedAlgorithm) as e:
        raise ValueError(str(e)) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"a {type(key).__name__}, not RSA")
    return key


def _canonical_problem(text: str, key: rsa.RSAPublicKey) -> str | None:
    """Why a parsed key text is not the canonical form of an allowed key, or None."""
    if key.public_numbers().e != PUBLIC_EXPONENT:
        return f"public exponent {key.public_numbers().e if key.public_numbers().e < 1 << 64 else 'huge'}, " \
               f"not {PUBLIC_EXPONENT}"
    if key.key_size not in MODULUS_BITS:
        return f"a {key.key_size}-bit modulus, not one of {', '.join(map(str, MODULUS_BITS))}"
    if key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() != text:
        return "not in canonical OpenSSH encoding"
    return None


@functools.lru_cache(maxsize=4096)  # every read checks every record's owner: the few real owners stay cached
def canonical_public_key(text: str) -> bool:
    """Whether `text` is exactly the canonical OpenSSH form of an RSA key with e=65537 and an allowed size.

    Cheap for anything long (refused unparsed) and cached per text, so a read of many records stays fast.
    """
    if not isinstance(text, str) or len(text) > MAX_KEY_TEXT or not text.startswith("ssh-rsa "):
        return False
    try:
        return _canonical_problem(text, _load_rsa(text)) is None
    except ValueError:
        return False


def load_public_key(public_key: bytes | str) -> rsa.RSAPublicKey:
    """Parse an OpenSSH RSA public key whatever its encoding (peer ids of keys read elsewhere); SwarmError if not."""
    text = normalize_public_key(public_key)
    try:
        return _load_rsa(text)
    except ValueError as e:
        raise SwarmError(_unusable(text, str(e))) from None


def check_public_key(public_key: bytes | str) -> rsa.RSAPublicKey:
    """The RSA key this text holds, refused with a readable error unless it is a key records can be signed
    with: canonical OpenSSH form, exponent 65537, 2048/3072/4096 bits (what a manifest may list)."""
    text = normalize_public_key(public_key)
    key = load_public_key(text)
    problem = _canonical_problem(text, key)
    if problem is not None:
        raise SwarmError(_unusable(text, problem))
    return key


def _unusable(text: str, why: str) -> str:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"'{shown}' is not a usable RSA public key ({why}): copy the line printed by python -m swarm.keygen"
