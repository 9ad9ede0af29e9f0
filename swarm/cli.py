"""What every swarm command line shares: `--a-b`/`--a_b` aliases, --version, logging, one-line errors, and the
flags several commands take (startup timeout, device and threads, metrics, key directories) with one default each."""

from __future__ import annotations

import argparse
import logging
import os
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


STARTUP_TIMEOUT = 30.0  # seconds to reach the initial peers, the same on every command


def cores() -> int:
    """CPU cores this process may run on (its affinity mask), as teft's --threads default counts them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def port(text: str) -> int:
    value = positive_int(text) if text != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number up to 65535, got {value}")
    return value


def startup_timeout_flag(p: argparse.ArgumentParser) -> None:
    flag(p, "startup-timeout", type=float, default=STARTUP_TIMEOUT,
         help=f"seconds to start the DHT node and reach an initial peer (default {STARTUP_TIMEOUT:g})")


def compute_flags(p: argparse.ArgumentParser) -> None:
    """--device and --threads with teft's meaning and defaults."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"] + [f"cuda:{i}" for i in range(16)],
                   metavar="{auto,cpu,cuda,cuda:N}", help="where the model runs (default auto: cuda when available)")
    p.add_argument("--threads", type=positive_int, default=cores(),
                   help=f"CPU threads for torch (default: the cores this process may use, {cores()} here); "
                        "use 1 per process when several share the machine")


def resolve_compute(device: str, threads: int) -> str:
    """Apply --threads and turn --device auto into cuda or cpu; one-line error if cuda is asked but absent."""
    import torch

    from swarm.errors import SwarmError

    torch.set_num_threads(threads)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SwarmError(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu or auto")
    return device


def metrics_flags(p: argparse.ArgumentParser) -> None:
    flag(p, "metrics-port", type=port, default=None,
         help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off; 0 picks a free port)")
    flag(p, "metrics-host", default="127.0.0.1",
         help="address the metrics endpoint listens on (default 127.0.0.1; 0.0.0.0 for a remote Prometheus)")


def identity_dir(path: str) -> None:
    """Create the directory a key file goes in (private: mode 0700), so no command needs a mkdir first."""
    from pathlib import Path

    from swarm.errors import SwarmError

    try:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise SwarmError(f"cannot create the directory of {path} ({err.strerror}): choose another path") from None
