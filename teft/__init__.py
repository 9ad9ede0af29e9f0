"""Targeted expert fine-tuning of Mixture-of-Experts models: the method, with no networking."""

from __future__ import annotations

PACKAGE = "teft-swarm"


def version() -> str:
    """One version string: the installed package's, else the source checkout's pyproject.toml."""
    from importlib import metadata

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"
