"""Turn a manifest template (e.g. configs/tiny.yaml) into the concrete manifest of one run.

A template leaves the validator allowlist and the genesis time open; a run fixes them, and with them
its run id. Files the template names by relative path (the expert map) are copied next to the new
manifest, so the run directory is self-contained and can be handed to other machines as it is.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

import yaml

from swarm import cli
from swarm.errors import SwarmError


def write_manifest(template: str | Path, out: str | Path, validators: list[str], genesis: float,
                   overrides: dict | None = None) -> Path:
    """Write `out` from `template` with the allowlist and genesis filled in; returns the path.

    Everything is checked before anything is written (a fault names the template, where it lies, and nothing is
    left behind); an existing `out` file is replaced (the command line refuses that without --force).
    """
    from swarm.protocol.manifest import from_dict

    template, out = Path(template), Path(out)
    try:
        raw = yaml.safe_load(template.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SwarmError(f"cannot read manifest template {template}: {err}") from None
    if not isinstance(raw, dict):
        raise SwarmError(f"{template} is not a manifest (a mapping of fields)")
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    raw["validators"] = list(validators)
    raw["genesis"] = float(genesis)
    emap = (raw.get("expert_map") or {}).get("path")
    source = copied = None
    if emap and not Path(emap).is_absolute():
        source = template.parent / emap
        if not source.is_file():
            raise SwarmError(f"{template} names expert map {emap}, which does not exist next to it")
        raw["expert_map"]["path"] = Path(emap).name
        copied = out.parent / Path(emap).name
    from_dict(raw, f"template {template}")  # validate before writing: the fault is the template's (or a flag's)
    if out.is_dir():
        raise SwarmError(f"--out {out} is a folder: name the manifest file, e.g. --out {out / 'run.yaml'}")
    made = _missing_dirs(out.parent)
    fresh_map = copied is not None and not copied.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if copied is not None:
            shutil.copyfile(source, copied)
        out.write_text(yaml.safe_dump(raw, sort_keys=False))
    except OSError as err:
        if fresh_map:
            with contextlib.suppress(OSError):
                copied.unlink()
        for folder in made:  # deepest first: only the folders this call created
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise SwarmError(f"cannot write {out} ({err.strerror or err}): choose another --out") from None
    return out


def _missing_dirs(folder: Path) -> list[Path]:
    """The folders of `folder`'s path that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def pack_spec(data: bytes) -> dict:
    """The manifest's `pack` section for these pack bytes: their hash, size, background and pieces root."""
    from swarm.net.pieces import pieces_root
    from teft.errors import TeftError
    from teft.files import content_hash
    from teft.pack import pack_info

    try:
        background = pack_info(data)["background"]
    except TeftError as err:
        raise SwarmError(str(err)) from None
    return {"sha256": content_hash(data), "bytes": len(data), "background": background, "pieces": pieces_root(data)}


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m swarm.launch", __doc__)
    parser.add_argument("--template", default="configs/tiny.yaml", help="manifest template (default configs/tiny.yaml)")
    parser.add_argument("--validators", nargs="+", required=True,
                        help="validator public keys, or key files (their public keys are read)")
    parser.add_argument("--quorum", type=cli.positive_int, default=None,
                        help="allowlisted rankings needed before anything is merged (default: the template's, "
                             "at most the number of validators)")
    cli.flag(parser, "start-in", type=float, default=60.0, help="seconds from now until genesis (default 60)")
    parser.add_argument("--out", required=True, help="where to write the run manifest (a file; refused if it "
                        "exists, unless --force)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out manifest (a new run id)")
    parser.add_argument("--pack", default=None, metavar="FILE",
                        help="pin this miner pack (python -m teft pack, built with the template's expert map): light "
                             "miners of its background load it, and fetch it from the swarm when they have none")
    args = parser.parse_args(argv)
    if Path(args.out).is_file() and not args.force:
        return cli.fail(f"--out {args.out} exists (a run manifest: replacing it makes a new run id): choose "
                        "another path, or pass --force to replace it")
    if args.quorum is not None and args.quorum > len(args.validators):
        return cli.fail(f"--quorum {args.quorum} exceeds the {len(args.validators)} validators given: lower it "
                        "or add validators")
    try:
        from swarm.net.identity import load_or_create

        keys = []
        for item in args.validators:
            if Path(item).exists():
                keys.append(load_or_create(item).public_key_str)
            elif item.startswith("ssh-"):
                keys.append(item)
            else:
                raise SwarmError(f"--validators {item}: no such key file, and not a public key: make it with "
                                 f"python -m swarm.keygen --identity {item}, or pass the public key it prints")
        overrides = {"quorum": args.quorum} if args.quorum is not None else {}
        pack = None
        if args.pack:
            try:
                pack = Path(args.pack).expanduser().read_bytes()
                overrides["pack"] = pack_spec(pack)
            except OSError as err:
                raise SwarmError(f"--pack {args.pack}: {err.strerror or err}") from None
            except SwarmError as err:
                raise SwarmError(f"--pack {args.pack}: {err}") from None
        path = write_manifest(args.template, args.out, keys, time.time() + args.start_in, overrides)
        from swarm.protocol.manifest import load, run_id

        manifest = load(path)
        if pack is not None:  # pack_spec hashed these very bytes into the manifest: only what they hold is checked
            from swarm.protocol.runtime import pack_metadata

            try:
                pack_metadata(manifest, pack)
            except SwarmError as err:
                path.unlink()
                raise SwarmError(f"--pack {args.pack}: {err}") from None
        print(f"wrote {path} (run id {run_id(manifest)}, {len(keys)} validators, quorum {manifest.quorum}); "
              f"genesis in {args.start_in:.0f}s")
    except SwarmError as err:
        return cli.fail(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
