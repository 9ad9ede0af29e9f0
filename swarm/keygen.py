"""`python -m swarm.keygen --out KEY`: make (or read) a peer key and print its public key."""

from __future__ import annotations

import argparse
import sys

from swarm.errors import SwarmError
from swarm.net.identity import load_or_create


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: where the key lives."""
    parser = argparse.ArgumentParser(
        prog="python -m swarm.keygen",
        description="Create a peer identity (or load an existing one) and print its public key, "
        "the line to add to a run manifest's `validators` allowlist.",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="path of the private key file (PEM, mode 0600); created if missing, never overwritten",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the public key on stdout and the peer id on stderr, so stdout can be piped into a manifest."""
    args = parse_args(argv)
    try:
        identity = load_or_create(args.out)
    except SwarmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# {identity.path}: peer id {identity.peer_key}", file=sys.stderr)
    print(identity.public_key_str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
