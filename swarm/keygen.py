"""`python -m swarm.keygen --identity KEY`: make (or read) a peer key and print its public key.

The public key is the line to add to a run manifest's `validators` allowlist (or to pass to
`python -m swarm.launch --validators`). The key's directory is created if missing.
"""

from __future__ import annotations

import argparse
import sys

from swarm import cli
from swarm.errors import SwarmError
from swarm.net.identity import load_or_create


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: where the key lives (--identity, as on every other command; --out is the old name)."""
    parser = cli.parser("python -m swarm.keygen", __doc__)
    parser.add_argument("--identity", "--out", dest="identity", required=True,
                        help="path of the private key file (PEM, mode 0600); created with its directory if missing, "
                             "never overwritten")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the public key on stdout and the peer id on stderr, so stdout can be piped into a manifest."""
    args = parse_args(argv)
    try:
        cli.identity_dir(args.identity)
        identity = load_or_create(args.identity)
    except SwarmError as e:
        return cli.fail(str(e))
    print(f"# {identity.path}: peer id {identity.peer_key}", file=sys.stderr)
    print(identity.public_key_str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
