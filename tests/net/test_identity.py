"""Identity persistence: the same key file always gives the same peer."""

from __future__ import annotations

import stat

import pytest
from hivemind.p2p import PeerID

from swarm import keygen
from swarm.errors import SwarmError
from swarm.net.identity import load_or_create, owner_subkey, peer_key_of, public_key_from_subkey


def test_reload_gives_same_peer(tmp_path):
    first = load_or_create(tmp_path / "peer.key")
    second = load_or_create(tmp_path / "peer.key")
    assert first.peer_key == second.peer_key
    assert first.public_key == second.public_key
    assert first.subkey == second.subkey == owner_subkey(first.public_key)
    assert stat.S_IMODE((tmp_path / "peer.key").stat().st_mode) == 0o600
    # the libp2p key file is the same RSA key, so p2pd will report this peer id
    assert PeerID.from_identity(first.p2p_identity_path.read_bytes()).to_base58() == first.peer_key
    assert peer_key_of(first.public_key_str) == first.peer_key
    assert public_key_from_subkey(first.subkey) == first.public_key_str
    assert public_key_from_subkey(b"plain") is None


def test_sign_verify_roundtrip(tmp_path):
    ident = load_or_create(tmp_path / "peer.key")
    signature = ident.private_key.sign(b"hello")
    assert ident.private_key.get_public_key().verify(b"hello", signature)


def test_missing_directory_is_one_line(tmp_path):
    with pytest.raises(SwarmError) as err:
        load_or_create(tmp_path / "nope" / "peer.key")
    assert "create it" in str(err.value) and "\n" not in str(err.value)


def test_corrupt_key_file(tmp_path):
    (tmp_path / "peer.key").write_text("not a key")
    with pytest.raises(SwarmError, match="not a PEM private key"):
        load_or_create(tmp_path / "peer.key")


def test_keygen_prints_public_key(tmp_path, capsys):
    assert keygen.main(["--out", str(tmp_path / "v.key")]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("ssh-rsa ") and out == load_or_create(tmp_path / "v.key").public_key_str
    # --identity, as on every other command, creates the key's directory (private); --out stays an alias
    assert keygen.main(["--identity", str(tmp_path / "keys" / "new" / "w.key")]) == 0
    assert (tmp_path / "keys" / "new" / "w.key").exists() and (tmp_path / "keys" / "new").stat().st_mode & 0o077 == 0
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert keygen.main(["--identity", str(tmp_path / "file" / "v.key")]) == 2  # a file where a directory goes
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create the directory") and err.count("\n") == 1


def test_concurrent_creation_agrees(tmp_path):
    """Two processes creating the same key file at once end up with one identity."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        keys = pool.map(_peer_key, [str(tmp_path / "race.key")] * 4)
    assert len(set(keys)) == 1 and keys[0] == load_or_create(tmp_path / "race.key").peer_key


def _peer_key(path: str) -> str:
    return load_or_create(path).peer_key
