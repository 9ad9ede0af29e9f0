"""What every swarm command line shares: `--a-b`/`--a_b` aliases, --version, logging, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys

from swarm import VERSION

NOISY_LOGGERS = ("hivemind", "transformers", "httpx", "urllib3")


def flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **kwargs) -> argparse.Action:
    """Register --a-b and its hivemind-style spelling --a_b as one option."""
    names = [f"--{name}"]
    if "-" in name:
        names.append(f"--{name.replace('-', '_')}")
    return parser.add_argument(*names, **kwargs)


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser with the module docstring as description and a --version flag."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s (teft-swarm) {VERSION}")
    return p


def setup_logging(level: str, tag: str = "") -> None:
    """Log lines on stderr with time and level; hivemind's and transformers' chatter kept to warnings."""
    prefix = f"[{tag}] " if tag else ""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {prefix}%(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str) -> int:
    """Print the one-line error every command ends with on bad input; exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2
