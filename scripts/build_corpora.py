"""Build the small domain corpora that ship in teft/assets/corpora/, so a fresh clone trains with no download.

Run:  python scripts/build_corpora.py [--out DIR] [--seed N]

Four domains, each written as {domain}.{train,validation,test}.jsonl.gz (one {"text": ...}
object per line, gzip with mtime 0 so equal input gives equal bytes) plus manifest.json that
records where every domain came from, the counts and the sha256 of every file:

- general: English prose: the help topics in the standard library's ``pydoc_data.topics``
  (packed paragraphs) and the docstrings of standard-library modules, classes and functions,
  read with ``ast`` from the source files (nothing is imported, so nothing has side effects).
  Split by whole topic or whole module, exact duplicate docstrings dropped first.
- code: standard-library Python source files (tests, idlelib, site-packages, generated codec
  tables and the pydoc topics excluded) with module, class and function docstrings cut out
  (they belong to general). One file is one document; files are split whole.
- legal: licence texts: /usr/share/common-licenses/*, the LICENSE.txt shipped with Python and
  the licence/notice files in the *.dist-info folders of the running interpreter's
  site-packages. Near-identical licences are removed before splitting (normalised text, copyright
  lines dropped, word 5-gram Jaccard > 0.8), and the rest is split by licence family (files that
  share most of their text go to the same split), so no licence leaks across splits.
- math: generated arithmetic, fraction, equation, percentage and word problems with worked
  step-by-step solutions, from seeded ``random.Random`` streams; validation and test come from
  streams separate from train and any text already in an earlier split is dropped.

What varies by machine (so the shipped files, with manifest.json, are the record, and a rebuild
elsewhere is not expected to be byte-identical):
- the Python version: the standard library's sources, docstrings and pydoc topics (general,
  code) change between releases, even patch releases;
- which licence files exist: /usr/share/common-licenses is Debian/Ubuntu only, and the
  dist-info licences depend on which packages are installed in the interpreter's environment;
- the zlib build, which can change the compressed bytes (not the texts).
The math domain depends only on the seed and on this script. Everything else is deterministic:
paths are sorted, every random choice comes from ``random.Random`` seeded by a string (stable
across runs and PYTHONHASHSEED), and no set or dict order decides anything.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import json
import math
import platform
import random
import re
import site
import sys
import sysconfig
import zlib
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "teft" / "assets" / "corpora"
DEFAULT_SEED = 20250601
SPLITS = ("train", "validation", "test")

CODE_CAP_BYTES = 8_000_000
MATH_TRAIN_BYTES = 3_000_000
MATH_HELDOUT_BYTES = 160_000
MAX_DOC_CHARS = 4000

# Standard-library folders that are tests, GUI-only tooling or not ours to ship as "stdlib code".
SKIP_DIR_NAMES = {"test", "tests", "idle_test", "idlelib", "site-packages", "__pycache__", "__phello__"}
SKIP_FILES = {"pydoc_data/topics.py", "this.py", "antigravity.py"}


Docs = list[str]


def rng_for(seed: int, tag: str) -> random.Random:
    """Give every consumer its own stream, so adding one never shifts another."""
    return random.Random(f"{seed}:{tag}")


# --------------------------------------------------------------------------- stdlib sources


def stdlib_dir() -> Path:
    """The directory holding the standard library's .py files."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[tuple[str, str]]:
    """Sorted (relative path, source) of the parseable non-test standard-library files."""
    base = stdlib_dir()
    out = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).as_posix()
        parts = rel.split("/")
        if any(p in SKIP_DIR_NAMES or p.startswith("config-") for p in parts[:-1]):
            continue
        if rel in SKIP_FILES or parts[-1].startswith("_sysconfigdata"):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            ast.parse(source)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        # Generated codec tables are long runs of hex literals, not code anyone writes.
        if rel.startswith("encodings/") and ("decoding_table" in source or "decoding_map" in source):
            continue
        out.append((rel, source))
    return out


def _docstring_nodes(tree: ast.AST) -> list[tuple[ast.Expr, bool, bool]]:
    """(docstring statement, is the only statement, belongs to the module) for each docstring."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                found.append((body[0], len(body) == 1, isinstance(node, ast.Module)))
    return found


def strip_docstrings(source: str) -> str | None:
    """Cut docstrings from source (they go to general); None if the result would not parse."""
    tree = ast.parse(source)
    lines = [line.encode("utf-8") for line in source.splitlines(keepends=True)]
    edits = sorted(
        (
            (n.lineno, n.col_offset, n.end_lineno, n.end_col_offset, sole, mod)
            for n, sole, mod in _docstring_nodes(tree)
        ),
        reverse=True,
    )
    for l0, c0, l1, c1, sole, is_module in edits:
        first, last = lines[l0 - 1], lines[l1 - 1]
        prefix, suffix = first[:c0], last[c1:]
        rest = suffix.strip()
        if not prefix.strip() and (not rest or rest.startswith(b"#")):
            newline = b"\n" if last.endswith(b"\n") else b""
            keep = [prefix + b"pass" + newline] if sole and not is_module else []
            lines[l0 - 1 : l1] = keep
        else:
            lines[l0 - 1 : l1] = [prefix + b"pass" + suffix]
    text = b"".join(lines).decode("utf-8")
    text = re.sub(r"\n{4,}", "\n\n\n", text).strip("\n")
    try:
        ast.parse(text)
    except SyntaxError:
        return None
    return text + "\n" if text else ""


def module_docstrings(rel: str, source: str) -> list[str]:
    """Cleaned docstrings of a module, its classes and functions, in source order."""
    tree = ast.parse(source)
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                docs.append((getattr(node, "lineno", 0), doc.strip()))
    return [d for _, d in sorted(docs, key=lambda x: x[0])]


def pack(pieces: Iterable[str], max_chars: int = MAX_DOC_CHARS) -> Docs:
    """Join short pieces into documents of at most max_chars, so tiny docs don't dominate."""
    docs: Docs = []
    cur: list[str] = []
    size = 0
    for piece in pieces:
        if cur and size + len(piece) + 2 > max_chars:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(piece)
        size += len(piece) + 2
    if cur:
        docs.append("\n\n".join(cur))
    return docs


# --------------------------------------------------------------------------- splitting


def nbytes(texts: Iterable[str]) -> int:
    """UTF-8 size, the unit every budget here is counted in."""
    return sum(len(t.encode("utf-8")) for t in texts)


def split_groups(
    groups: list[tuple[str, Docs]], fractions: dict[str, float], rng: random.Random
) -> dict[str, list[tuple[str, Docs]]]:
    """Assign whole groups to validation/test until each holds its byte fraction; the rest is train."""
    order = sorted(groups, key=lambda g: g[0])
    rng.shuffle(order)
    total = sum(nbytes(d) for _, d in order)
    out: dict[str, list[tuple[str, Docs]]] = {s: [] for s in SPLITS}
    i = 0
    for split in ("validation", "test"):
        target = fractions[split] * total
        got = 0
        while i < len(order) and (got < target or not out[split]):
            # Skip groups that alone exceed twice the target, they belong in train.
            key, docs = order[i]
            size = nbytes(docs)
            if size > 2 * target and len(order) - i > 2:
                out["train"].append(order.pop(i))
                continue
            out[split].append((key, docs))
            got += size
            i += 1
    out["train"].extend(order[i:])
    for split in SPLITS:
        out[split].sort(key=lambda g: g[0])
    return out


def make_disjoint(splits: dict[str, Docs]) -> dict[str, Docs]:
    """Drop in-split repeats and any text already in an earlier split (train, validation, test)."""
    seen: set[str] = set()
    out = {}
    for split in SPLITS:
        kept = []
        for text in splits[split]:
            if text and text not in seen:
                seen.add(text)
                kept.append(text)
        out[split] = kept
    return out


# --------------------------------------------------------------------------- general


def build_general(seed: int, sources: list[tuple[str, str]]) -> tuple[dict[str, Docs], dict]:
    """Prose from pydoc topics and stdlib docstrings, split by topic or module."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    groups: list[tuple[str, Docs]] = []
    for key in sorted(topics):
        paras = [p.strip("\n") for p in re.split(r"\n\s*\n", topics[key]) if p.strip()]
        fresh = [p for p in paras if p not in seen]
        seen.update(fresh)
        if fresh:
            groups.append((f"pydoc:{key}", pack(fresh)))
    n_topics = len(groups)
    for rel, source in sources:
        if rel.startswith("encodings/"):
            continue
        fresh = []
        for doc in module_docstrings(rel, source):
            if len(doc) >= 40 and doc not in seen:
                seen.add(doc)
                fresh.append(doc)
        if fresh:
            module = rel[:-3].replace("/", ".").removesuffix(".__init__")
            groups.append((f"docstrings:{module}", pack(fresh)))
    parts = split_groups(groups, {"validation": 0.05, "test": 0.05}, rng_for(seed, "general:split"))
    splits = make_disjoint({s: [d for _, docs in parts[s] for d in docs] for s in SPLITS})
    info = {
        "source": "pydoc_data.topics help topics (paragraphs packed into documents of <= 4000 chars) and "
        "docstrings of standard-library modules, classes and functions parsed with ast; split by whole "
        "topic or module; exact duplicates dropped",
        "pydoc_topics": n_topics,
        "modules": len(groups) - n_topics,
        "groups": {s: [k for k, _ in parts[s]] for s in ("validation", "test")},
    }
    return splits, info


# --------------------------------------------------------------------------- code


def build_code(seed: int, sources: list[tuple[str, str]]) -> tuple[dict[str, Docs], dict]:
    """Stdlib source files without docstrings, capped in size, split by whole file."""
    stripped: list[tuple[str, str]] = []
    failed = []
    for rel, source in sources:
        text = strip_docstrings(source)
        if text is None:
            failed.append(rel)
        elif len(text.strip()) >= 200:
            stripped.append((rel, text))
    rng = rng_for(seed, "code:select")
    order = list(stripped)
    rng.shuffle(order)
    chosen, total = [], 0
    for rel, text in order:
        size = len(text.encode("utf-8"))
        if size > 300_000 or total + size > CODE_CAP_BYTES:
            continue
        chosen.append((rel, [text]))
        total += size
    parts = split_groups(chosen, {"validation": 0.05, "test": 0.05}, rng_for(seed, "code:split"))
    splits = make_disjoint({s: [d for _, docs in parts[s] for d in docs] for s in SPLITS})
    info = {
        "source": f"Python {platform.python_version()} standard library .py files (tests, idlelib, "
        "site-packages, generated codec tables and pydoc_data/topics.py excluded), docstrings removed "
        f"with ast, one file per document, chosen by seeded shuffle up to {CODE_CAP_BYTES} bytes",
        "candidates": len(stripped),
        "not_reparsable_after_strip": failed,
        "files": {s: [k for k, _ in parts[s]] for s in SPLITS},
    }
    return splits, info


# --------------------------------------------------------------------------- legal

LICENCE_NAME = re.compile(r"(LICEN[CS]E|COPYING|NOTICE|COPYRIGHT)", re.IGNORECASE)
COPYRIGHT_LINE = re.compile(
    r"^\s*(copyright\b|\(c\)|©|portions copyright|all rights reserved|written by|author)", re.IGNORECASE
)


def legal_candidates() -> list[tuple[str, str]]:
    """(label, text) of licence files on this machine, in a fixed priority order."""
    found: list[tuple[str, Path]] = []
    common = Path("/usr/share/common-licenses")
    if common.is_dir():
        found += [(f"common-licenses/{p.name}", p) for p in sorted(common.iterdir()) if p.is_file()]
    for candidate in (stdlib_dir() / "LICENSE.txt", Path(sys.base_prefix) / "LICENSE.txt"):
        if candidate.is_file():
            found.append(("python/LICENSE.txt", candidate))
    for sp in sorted({Path(p) for p in site.getsitepackages()}):
        if not sp.is_dir():
            continue
        for info in sorted(sp.rglob("*.dist-info")):
            for path in sorted(info.rglob("*")):
                if path.is_file() and LICENCE_NAME.search(path.name):
                    found.append((f"site-packages/{path.relative_to(sp).as_posix()}", path))
    out, real_seen = [], set()
    for label, path in found:
        real = path.resolve()
        if real in real_seen:
            continue
        real_seen.add(real)
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        if len(text) >= 300:
            out.append((label, text))
    return out


def shingles(text: str, k: int = 5) -> set[str]:
    """Word k-grams of the licence with copyright-holder lines dropped, for near-duplicate tests."""
    body = "\n".join(line for line in text.lower().split("\n") if not COPYRIGHT_LINE.match(line))
    words = re.findall(r"[a-z0-9]+", body)
    if len(words) < k:
        return {" ".join(words)}
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def build_legal(seed: int) -> tuple[dict[str, Docs], dict]:
    """Licence texts, near-duplicates removed, split by licence family."""
    cands = legal_candidates()
    kept: list[tuple[str, str, set[str]]] = []
    dropped = {}
    for label, text in cands:
        sh = shingles(text)
        dup = None
        for klabel, _, ksh in kept:
            inter = len(sh & ksh)
            if inter / max(1, len(sh | ksh)) > 0.8:
                dup = klabel
                break
        if dup is None:
            kept.append((label, text, sh))
        else:
            dropped[label] = dup
    # Families: files sharing most of the smaller one's text (a NOTICE quoting the Apache licence,
    # a bundle embedding MIT) are kept together so no split sees another split's licence text.
    parent = list(range(len(kept)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            a, b = kept[i][2], kept[j][2]
            if len(a & b) / max(1, min(len(a), len(b))) >= 0.5:
                parent[find(j)] = find(i)
    families: dict[int, list[int]] = {}
    for i in range(len(kept)):
        families.setdefault(find(i), []).append(i)
    groups = [(kept[m[0]][0], [kept[i][1] for i in m]) for m in families.values()]
    labels = {kept[m[0]][0]: [kept[i][0] for i in m] for m in families.values()}
    parts = split_groups(groups, {"validation": 0.1, "test": 0.1}, rng_for(seed, "legal:split"))
    splits = make_disjoint({s: [d for _, docs in parts[s] for d in docs] for s in SPLITS})
    info = {
        "source": "licence texts on the build machine: /usr/share/common-licenses, Python's LICENSE.txt, "
        "licence/notice files of installed *.dist-info; near-duplicates (5-gram Jaccard > 0.8 after "
        "dropping copyright lines) removed; split by family (5-gram containment >= 0.5)",
        "candidates": len(cands),
        "near_duplicates_dropped": dropped,
        "families": len(groups),
        "files": {s: sorted(lbl for key, _ in parts[s] for lbl in labels[key]) for s in SPLITS},
    }
    return splits, info


# --------------------------------------------------------------------------- math

NAMES = (
    "Ava Ben Carla Dmitri Elena Farid Grace Hiro Imani Jonas Keiko Liam Maya Nadia Omar Priya Quinn Rosa "
    "Samir Tara Umar Vera Wen Xavier Yara Zane Amara Bruno Chloe Diego Esther Felix Gita Hugo Ines Jamal "
    "Kofi Lena Mateo Nora Oscar Paloma Rahul Sofia Tomas Uma Victor Wanda Yusuf Zoe Aiko Bianca Connor Dalia "
    "Emil Freya Gabriel Hana Ivan Julia"
).split()
ITEMS = (
    ("apple", "apples"),
    ("pencil", "pencils"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("cookie", "cookies"),
    ("orange", "oranges"),
    ("card", "cards"),
    ("shell", "shells"),
    ("stamp", "stamps"),
    ("balloon", "balloons"),
    ("notebook", "notebooks"),
    ("cupcake", "cupcakes"),
    ("toy car", "toy cars"),
    ("seed packet", "seed packets"),
    ("bead", "beads"),
    ("ticket", "tickets"),
    ("muffin", "muffins"),
    ("candle", "candles"),
    ("eraser", "erasers"),
    ("egg", "eggs"),
    ("brick", "bricks"),
    ("flower", "flowers"),
    ("coin", "coins"),
    ("puzzle", "puzzles"),
    ("bottle", "bottles"),
    ("rock", "rocks"),
    ("ribbon", "ribbons"),
    ("button", "buttons"),
    ("tomato", "tomatoes"),
    ("peach", "peaches"),
    ("box of crayons", "boxes of crayons"),
    ("bag of rice", "bags of rice"),
    ("jar of honey", "jars of honey"),
)
GOODS = (
    ("notebook", "notebooks"),
    ("sandwich", "sandwiches"),
    ("pen", "pens"),
    ("T-shirt", "T-shirts"),
    ("movie ticket", "movie tickets"),
    ("bus pass", "bus passes"),
    ("plant pot", "plant pots"),
    ("loaf of bread", "loaves of bread"),
    ("bag of apples", "bags of apples"),
    ("pair of socks", "pairs of socks"),
    ("comic book", "comic books"),
    ("cup of coffee", "cups of coffee"),
    ("lamp", "lamps"),
    ("mug", "mugs"),
)
PRICED = (
    "jacket",
    "bicycle",
    "pair of shoes",
    "backpack",
    "lamp",
    "board game",
    "watch",
    "chair",
    "tent",
    "guitar",
    "blender",
    "printer",
    "coat",
    "desk",
    "kettle",
    "camera",
)
PLACES = ("school", "library", "market", "park", "museum", "bakery", "farm", "garden", "club", "shop", "camp")
VEHICLES = (
    ("train", "km", "km/h"),
    ("car", "km", "km/h"),
    ("cyclist", "km", "km/h"),
    ("bus", "miles", "mph"),
    ("truck", "miles", "mph"),
    ("boat", "km", "km/h"),
    ("runner", "km", "km/h"),
)
VARS = ("x", "x", "x", "y", "n", "a", "t", "k", "m", "z")
COLUMNS = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions", "ten-millions")
PROBLEM_HEADS = ("Problem:", "Question:", "Exercise:", "Q:", "Task:")
SOLUTION_HEADS = (
    "Solution:",
    "Worked solution:",
    "Answer with steps:",
    "Let's solve it step by step.",
    "Step-by-step solution:",
)


def money(cents: int) -> str:
    """Format cents as dollars with two decimals, the way prices are written."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}${cents // 100}.{cents % 100:02d}"


def frac(q: Fraction) -> str:
    """A fraction as a/b, or an integer when whole."""
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


def mixed(q: Fraction) -> str:
    """An improper fraction as a mixed number."""
    whole, rem = divmod(q.numerator, q.denominator)
    return f"{whole} {rem}/{q.denominator}" if rem else str(whole)


def decimal(q: Fraction, places: int = 4) -> str:
    """A terminating fraction as a decimal without trailing zeros."""
    text = f"{float(q):.{places}f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def terminates(q: Fraction, max_places: int = 2) -> bool:
    """True when q has at most max_places decimals, so answers stay exact."""
    return (q * 10**max_places).denominator == 1


def signed(v: int) -> str:
    """' + v' or ' - |v|' for writing terms of an expression."""
    return f" + {v}" if v >= 0 else f" - {-v}"


def term(a: int, var: str) -> str:
    """The term a·var written as people write it (x, -x, 3x)."""
    return var if a == 1 else f"-{var}" if a == -1 else f"{a}{var}"


def column_add(r: random.Random, nums: list[int]) -> list[str]:
    """Column addition with carries, one line per column."""
    steps, carry = [], 0
    ncols = max(len(str(n)) for n in nums)
    for col in range(ncols):
        digits = [(n // 10**col) % 10 for n in nums if n >= 10**col]
        total = sum(digits) + carry
        parts = " + ".join(str(d) for d in digits)
        if carry:
            parts += f" + {carry} (carried)"
        name = COLUMNS[col].capitalize() if col < len(COLUMNS) else f"Column {col + 1}"
        if col == ncols - 1:
            steps.append(f"{name} column: {parts} = {total}. Write {total}.")
            break
        digit, carry = total % 10, total // 10
        if carry:
            verb = r.choice(("write", "put down", "keep"))
            steps.append(f"{name} column: {parts} = {total}. {verb.capitalize()} {digit} and carry {carry}.")
        else:
            steps.append(f"{name} column: {parts} = {total}. Write {digit}.")
    return steps


def gen_addition(r: random.Random) -> tuple[str, list[str], str]:
    """Multi-digit addition where carries actually happen."""
    k = r.choice((2, 2, 2, 3))
    top = r.randint(2, 6)
    nums = [r.randint(10 ** (d - 1), 10**d - 1) for d in (r.randint(max(2, top - 2), top) for _ in range(k))]
    total = sum(nums)
    q = r.choice(
        (
            f"What is {' + '.join(map(str, nums))}?",
            f"Add {', '.join(map(str, nums[:-1]))} and {nums[-1]}.",
            f"Find the sum of {', '.join(map(str, nums[:-1]))} and {nums[-1]}.",
            f"Compute {' + '.join(map(str, nums))} using column addition.",
        )
    )
    steps = ["Line the numbers up by place value and add column by column from the right."]
    steps += column_add(r, nums)
    steps.append(f"Reading the digits gives {total}.")
    return q, steps, str(total)


def gen_subtraction(r: random.Random) -> tuple[str, list[str], str]:
    """Multi-digit subtraction with borrowing, including borrowing across zeros."""
    a = r.randint(100, 10 ** r.randint(3, 6) - 1)
    if r.random() < 0.3:
        s = list(str(a))
        for i in range(1, len(s) - 1):
            if r.random() < 0.5:
                s[i] = "0"
        a = int("".join(s))
    b = r.randint(10, a - 1)
    diff = a - b
    q = r.choice(
        (
            f"What is {a} - {b}?",
            f"Subtract {b} from {a}.",
            f"Find the difference between {a} and {b}.",
            f"Compute {a} - {b} with column subtraction.",
        )
    )
    steps = ["Write the larger number on top and subtract column by column from the right, borrowing when needed."]
    borrow = 0
    for col in range(len(str(a))):
        d = (a // 10**col) % 10
        bd = (b // 10**col) % 10 if b >= 10**col else 0
        start = d - borrow
        name = COLUMNS[col].capitalize() if col < len(COLUMNS) else f"Column {col + 1}"
        top = f"{d} - 1 (borrowed) = {start}" if borrow else f"{d}"
        if start >= bd:
            steps.append(f"{name}: {top}; {start} - {bd} = {start - bd}.")
            borrow = 0
        else:
            steps.append(
                f"{name}: {top}, which is less than {bd}, so borrow 10 from the next column: "
                f"{start + 10} - {bd} = {start + 10 - bd}."
            )
            borrow = 1
    steps.append(f"The digits read {diff}. Check: {diff} + {b} = {a}.")
    return q, steps, str(diff)


def gen_multiplication(r: random.Random) -> tuple[str, list[str], str]:
    """Long multiplication by partial products or by a single digit with carries."""
    a = r.randint(12, 10 ** r.randint(2, 4) - 1)
    if r.random() < 0.4:
        b = r.randint(3, 9)
        q = r.choice((f"What is {a} × {b}?", f"Multiply {a} by {b}.", f"Compute {a} times {b}."))
        steps, carry = [f"Multiply each digit of {a} by {b}, starting from the ones, and carry."], 0
        digits = str(a)[::-1]
        for col, ch in enumerate(digits):
            prod = int(ch) * b + carry
            extra = f" + {carry} (carried)" if carry else ""
            name = COLUMNS[col].capitalize()
            if col == len(digits) - 1:
                steps.append(f"{name}: {ch} × {b}{extra} = {prod}. Write {prod}.")
            else:
                carry = prod // 10
                steps.append(
                    f"{name}: {ch} × {b}{extra} = {prod}. Write {prod % 10}"
                    + (f" and carry {carry}." if carry else ".")
                )
        steps.append(f"So {a} × {b} = {a * b}.")
        return q, steps, str(a * b)
    b = r.randint(12, 10 ** r.randint(2, 3) - 1)
    q = r.choice(
        (
            f"What is {a} × {b}?",
            f"Multiply {a} by {b}.",
            f"Find the product of {a} and {b}.",
            f"Use partial products to compute {a} × {b}.",
        )
    )
    parts = []
    for col, ch in enumerate(str(b)[::-1]):
        if ch != "0":
            parts.append(int(ch) * 10**col)
    parts.reverse()
    steps = [f"Split {b} by place value: {b} = {' + '.join(map(str, parts))}."]
    prods = []
    for p in parts:
        steps.append(f"{a} × {p} = {a * p}.")
        prods.append(a * p)
    if len(prods) > 1:
        steps.append(f"Add the partial products: {' + '.join(map(str, prods))} = {a * b}.")
    steps.append(f"So {a} × {b} = {a * b}.")
    return q, steps, str(a * b)


def gen_division(r: random.Random) -> tuple[str, list[str], str]:
    """Long division with the bring-down steps and a remainder check."""
    b = r.choice((r.randint(2, 9), r.randint(2, 9), r.randint(11, 25)))
    a = r.randint(b * 10, 10 ** r.randint(3, 5) - 1)
    if r.random() < 0.4:
        a -= a % b
    qt, rem = divmod(a, b)
    q = r.choice(
        (
            f"What is {a} ÷ {b}?",
            f"Divide {a} by {b}.",
            f"Use long division to find {a} ÷ {b}.",
            f"How many times does {b} go into {a}, and what is left over?",
        )
    )
    steps = [f"Divide {a} by {b} one digit at a time, from the left."]
    cur = 0
    started = False
    for ch in str(a):
        cur = cur * 10 + int(ch)
        if not started and cur < b:
            continue
        d = cur // b
        if not started:
            steps.append(
                f"{b} goes into {cur} {d} time{'s' if d != 1 else ''}: {d} × {b} = {d * b}, remainder {cur - d * b}."
            )
            started = True
        else:
            steps.append(
                f"Bring down {ch} to make {cur}. {b} goes into {cur} {d} time{'s' if d != 1 else ''}: "
                f"{d} × {b} = {d * b}, remainder {cur - d * b}."
            )
        cur -= d * b
    if rem:
        steps.append(f"The quotient is {qt} with remainder {rem}. Check: {b} × {qt} + {rem} = {a}.")
        return q, steps, f"{qt} remainder {rem}"
    steps.append(f"The remainder is 0, so {a} ÷ {b} = {qt}. Check: {b} × {qt} = {a}.")
    return q, steps, str(qt)


def _simplify_steps(num: int, den: int) -> tuple[list[str], Fraction]:
    """Steps that reduce num/den by the greatest common divisor."""
    g = math.gcd(num, den)
    q = Fraction(num, den)
    if g == 1:
        return [f"{num} and {den} have no common factor greater than 1, so {num}/{den} is in lowest terms."], q
    return [f"The greatest common divisor of {num} and {den} is {g}; divide both by {g}: {num}/{den} = {frac(q)}."], q


def gen_fraction(r: random.Random) -> tuple[str, list[str], str]:
    """Fraction addition, subtraction, multiplication or division with simplification."""
    op = r.choice(("+", "+", "-", "×", "×", "÷"))
    b, d = r.randint(2, 12), r.randint(2, 12)
    a, c = r.randint(1, b + (b // 2 if r.random() < 0.2 else -1)), r.randint(1, d - 1)
    x, y = Fraction(a, b), Fraction(c, d)
    if op == "-" and x < y:
        (a, b, x), (c, d, y) = (c, d, y), (a, b, x)
    fa, fc = f"{a}/{b}", f"{c}/{d}"
    q = r.choice(
        (
            f"What is {fa} {op} {fc}?",
            f"Compute {fa} {op} {fc} and simplify.",
            f"Work out {fa} {op} {fc}. Give the answer in lowest terms.",
        )
    )
    steps = []
    if op in "+-":
        word = "Add" if op == "+" else "Subtract"
        if b == d:
            num = a + c if op == "+" else a - c
            steps.append(
                f"The denominators are both {b}, so {word.lower()} the numerators: "
                f"{a} {op} {c} = {num}, giving {num}/{b}."
            )
            den = b
        else:
            den = b * d // math.gcd(b, d)
            steps.append(f"The denominators are {b} and {d}. Their least common denominator is {den}.")
            ka, kc = den // b, den // d
            steps.append(
                f"{a}/{b} = {a * ka}/{den} (multiply top and bottom by {ka})."
                if ka > 1
                else f"{a}/{b} already has denominator {den}."
            )
            steps.append(
                f"{c}/{d} = {c * kc}/{den} (multiply top and bottom by {kc})."
                if kc > 1
                else f"{c}/{d} already has denominator {den}."
            )
            num = a * ka + c * kc if op == "+" else a * ka - c * kc
            steps.append(f"{word} the numerators: {a * ka} {op} {c * kc} = {num}, giving {num}/{den}.")
        if num == 0:
            steps.append("The result is 0.")
            return q, steps, "0"
        more, res = _simplify_steps(num, den)
    elif op == "×":
        num, den = a * c, b * d
        steps.append(f"Multiply the numerators: {a} × {c} = {num}. Multiply the denominators: {b} × {d} = {den}.")
        steps.append(f"That gives {num}/{den}.")
        more, res = _simplify_steps(num, den)
    else:
        num, den = a * d, b * c
        steps.append(f"Dividing by {c}/{d} is the same as multiplying by its reciprocal {d}/{c}.")
        steps.append(f"{a}/{b} × {d}/{c} = {a * d}/{b * c}.")
        more, res = _simplify_steps(num, den)
    steps += more
    answer = frac(res)
    if res.denominator > 1 and res > 1:
        steps.append(f"As a mixed number, {answer} = {mixed(res)}.")
    return q, steps, answer


def _move(b: int | Fraction, what: str) -> str:
    """The inverse-operation phrase that removes the constant b from one side."""
    return f"Subtract {what} from both sides" if b > 0 else f"Add {what} to both sides"


def _paren(q: int | Fraction) -> str:
    """A number ready to be multiplied or divided by: negatives and fractions in parentheses."""
    q = Fraction(q)
    return frac(q) if q >= 0 and q.denominator == 1 else f"({frac(q)})"


def gen_linear(r: random.Random) -> tuple[str, list[str], str]:
    """Linear equations in one unknown, solved by inverse operations with a check."""
    v = r.choice(VARS)
    kind = r.choice(("ax+b=c", "ax+b=c", "ax+b=c", "x/a+b=c", "a(x+b)=c", "ax+b=cx+d", "ax+b=cx+d", "x+b=c"))
    fractional = r.random() < 0.12
    nonzero = [i for i in range(-30, 31) if i]
    steps: list[str] = []
    if kind == "x+b=c":
        sol = Fraction(r.randint(-25, 40))
        b = r.choice(nonzero)
        c = sol + b
        eq = f"{v}{signed(b)} = {frac(c)}"
        steps.append(f"{_move(b, str(abs(b)))}: {v} = {frac(c)}{signed(-b)} = {frac(sol)}.")
        check = f"{frac(sol)}{signed(b)} = {frac(c)}"
    elif kind == "ax+b=c":
        a = r.choice([i for i in range(-9, 13) if i not in (0, 1)])
        sol = Fraction(r.randint(-20, 30), abs(a)) if fractional else Fraction(r.randint(-12, 20))
        b = r.choice(nonzero)
        c = a * sol + b
        eq = f"{term(a, v)}{signed(b)} = {frac(c)}"
        steps.append(f"{_move(b, str(abs(b)))}: {term(a, v)} = {frac(c)}{signed(-b)} = {frac(c - b)}.")
        steps.append(f"Divide both sides by {a}: {v} = {frac(c - b)} ÷ {_paren(a)} = {frac(sol)}.")
        check = f"{a} × {_paren(sol)}{signed(b)} = {frac(a * sol)}{signed(b)} = {frac(c)}"
    elif kind == "x/a+b=c":
        a = r.randint(2, 9)
        sol = Fraction(a * r.randint(-6, 12))
        b = r.choice(nonzero)
        c = sol / a + b
        eq = f"{v}/{a}{signed(b)} = {frac(c)}"
        steps.append(f"{_move(b, str(abs(b)))}: {v}/{a} = {frac(c - b)}.")
        steps.append(f"Multiply both sides by {a}: {v} = {_paren(c - b)} × {a} = {frac(sol)}.")
        check = f"{frac(sol)}/{a}{signed(b)} = {frac(sol / a)}{signed(b)} = {frac(c)}"
    elif kind == "a(x+b)=c":
        a = r.choice([i for i in range(-6, 10) if i not in (0, 1)])
        sol = Fraction(r.randint(-12, 20))
        b = r.choice([i for i in range(-15, 16) if i])
        c = a * (sol + b)
        eq = f"{a}({v}{signed(b)}) = {frac(c)}"
        if r.random() < 0.5:
            steps.append(f"Divide both sides by {a}: {v}{signed(b)} = {frac(c / a)}.")
            steps.append(f"{_move(b, str(abs(b)))}: {v} = {frac(sol)}.")
        else:
            steps.append(f"Distribute the {a}: {term(a, v)}{signed(a * b)} = {frac(c)}.")
            steps.append(f"{_move(a * b, str(abs(a * b)))}: {term(a, v)} = {frac(c - a * b)}.")
            steps.append(f"Divide both sides by {a}: {v} = {frac(sol)}.")
        check = f"{a}({frac(sol)}{signed(b)}) = {a} × {_paren(sol + b)} = {frac(c)}"
    else:
        a = r.choice([i for i in range(-6, 13) if i])
        cc = r.choice([i for i in range(-6, 10) if i and i != a])
        k = a - cc
        sol = Fraction(r.randint(-20, 30), abs(k)) if fractional and abs(k) > 1 else Fraction(r.randint(-12, 20))
        b = r.choice(nonzero)
        d = int(k * sol + b)
        eq = f"{term(a, v)}{signed(b)} = {term(cc, v)}{signed(d) if d else ''}"
        steps.append(f"{_move(cc, term(abs(cc), v))}: {term(k, v)}{signed(b)} = {d}.")
        steps.append(f"{_move(b, str(abs(b)))}: {term(k, v)} = {d - b}.")
        if k != 1:
            steps.append(f"Divide both sides by {k}: {v} = {d - b} ÷ {_paren(k)} = {frac(sol)}.")
        check = (
            f"the left side is {a} × {_paren(sol)}{signed(b)} = {frac(a * sol + b)} and the right side is "
            f"{cc} × {_paren(sol)}{signed(d)} = {frac(cc * sol + d)}"
        )
    q = r.choice((f"Solve for {v}: {eq}.", f"Solve {eq}.", f"Find {v} if {eq}.", f"What value of {v} makes {eq} true?"))
    steps.append(f"Check: {check}.")
    answer = f"{v} = {frac(sol)}"
    if sol.denominator > 1:
        answer += f" (about {float(sol):.3g})" if not terminates(sol, 3) else f" = {decimal(sol)}"
    return q, steps, answer


def gen_percent(r: random.Random) -> tuple[str, list[str], str]:
    """Percent of, what percent, percent change, discounts and reverse percentages."""
    kind = r.choice(("of", "of", "what", "change", "discount", "tax", "reverse"))
    for _ in range(100):
        if kind == "of":
            p, n = r.choice((r.randint(1, 99), 5 * r.randint(1, 40))), r.randint(2, 400) * r.choice((1, 5, 10))
            res = Fraction(p * n, 100)
            if not terminates(res):
                continue
            q = r.choice((f"What is {p}% of {n}?", f"Find {p}% of {n}.", f"Calculate {p} percent of {n}."))
            steps = [
                f"{p}% means {p}/100 = {decimal(Fraction(p, 100))}.",
                f"Multiply: {decimal(Fraction(p, 100))} × {n} = {decimal(res)}.",
            ]
            return q, steps, decimal(res)
        if kind == "what":
            whole = r.randint(4, 500)
            part = r.randint(1, whole + whole // 2)
            pct = Fraction(part * 100, whole)
            if not terminates(pct, 1):
                continue
            q = r.choice(
                (
                    f"{part} is what percent of {whole}?",
                    f"What percentage of {whole} is {part}?",
                    f"Express {part} out of {whole} as a percent.",
                )
            )
            steps = [
                f"Divide the part by the whole: {part} ÷ {whole} = {decimal(Fraction(part, whole))}.",
                f"Multiply by 100 to get a percent: {decimal(pct)}%.",
            ]
            return q, steps, f"{decimal(pct)}%"
        if kind == "change":
            old = r.randint(2, 400) * r.choice((1, 5))
            pct = r.choice((r.randint(1, 90), 5 * r.randint(1, 30)))
            up = r.random() < 0.5
            new = Fraction(old * (100 + pct if up else 100 - pct), 100)
            if not terminates(new) or new <= 0:
                continue
            thing = r.choice(
                (
                    "The price of a " + r.choice(PRICED),
                    f"The number of visitors to the {r.choice(PLACES)}",
                    "A town's population",
                    "The rent",
                    f"The number of {r.choice(ITEMS)[1]} in stock",
                )
            )
            q = (
                f"{thing} {'rose' if up else 'fell'} from {old} to {decimal(new)}. By what percent did it "
                f"{'increase' if up else 'decrease'}?"
            )
            diff = abs(new - old)
            steps = [
                f"The change is {decimal(new)} - {old} = {decimal(new - old)}."
                if up
                else f"The change is {old} - {decimal(new)} = {decimal(diff)}.",
                f"Divide by the original amount: {decimal(diff)} ÷ {old} = {decimal(diff / old)}.",
                f"As a percent that is {pct}% {'increase' if up else 'decrease'}.",
            ]
            return q, steps, f"{pct}%"
        if kind in ("discount", "tax"):
            price = r.randint(4, 600) * r.choice((100, 100, 50, 25))
            pct = r.choice((5, 10, 15, 20, 25, 30, 40, 50, r.randint(1, 60)))
            amount = Fraction(price * pct, 100)
            if amount.denominator != 1:
                continue
            amount = int(amount)
            item = r.choice(PRICED)
            name = r.choice(NAMES)
            if kind == "discount":
                q = r.choice(
                    (
                        f"A {item} costs {money(price)} and is on sale for {pct}% off. What is the sale price?",
                        f"{name} buys a {item} marked {money(price)} with a {pct}% discount. How much does {name} pay?",
                    )
                )
                steps = [
                    f"The discount is {pct}% of {money(price)}: {decimal(Fraction(pct, 100))} × {money(price)} = "
                    f"{money(amount)}.",
                    f"Subtract it from the price: {money(price)} - {money(amount)} = {money(price - amount)}.",
                ]
                return q, steps, money(price - amount)
            q = r.choice(
                (
                    f"A {item} costs {money(price)} before a {pct}% sales tax. What is the total cost?",
                    f"{name} pays {money(price)} for a {item}, plus {pct}% tax. What is the total?",
                )
            )
            steps = [
                f"The tax is {pct}% of {money(price)}: {decimal(Fraction(pct, 100))} × {money(price)} = "
                f"{money(amount)}.",
                f"Add it to the price: {money(price)} + {money(amount)} = {money(price + amount)}.",
            ]
            return q, steps, money(price + amount)
        orig = r.randint(2, 400) * 100
        pct = r.choice((10, 20, 25, 40, 50, 75, 15, 30))
        final = Fraction(orig * (100 - pct), 100)
        if final.denominator != 1:
            continue
        item = r.choice(PRICED)
        q = f"After a {pct}% discount, a {item} costs {money(int(final))}. What was the original price?"
        steps = [
            f"After a {pct}% discount the price is {100 - pct}% of the original.",
            f"So original × {decimal(Fraction(100 - pct, 100))} = {money(int(final))}.",
            f"Original = {money(int(final))} ÷ {decimal(Fraction(100 - pct, 100))} = {money(orig)}.",
        ]
        return q, steps, money(orig)
    return gen_percent(r)


def gen_word(r: random.Random) -> tuple[str, list[str], str]:
    """Everyday word problems that need one to three operations."""
    kind = r.choice(
        (
            "change",
            "share",
            "distance",
            "wage",
            "ages",
            "rectangle",
            "total",
            "unit",
            "recipe",
            "average",
            "time",
            "consecutive",
            "groups",
        )
    )
    name, other = r.sample(NAMES, 2)
    if kind == "change":
        sing, plur = r.choice(GOODS)
        k = r.randint(2, 9)
        price = r.randint(50, 2500) // 5 * 5
        bill = next(b for b in (500, 1000, 2000, 5000, 10000, 20000, 50000, 100000) if b >= k * price)
        cost = k * price
        q = r.choice(
            (
                f"{name} buys {k} {plur} at {money(price)} each and pays with a {money(bill)} bill. "
                f"How much change does {name} get?",
                f"{k} {plur} cost {money(price)} each. {name} hands the cashier {money(bill)}. What is the change?",
            )
        )
        steps = [
            f"Total cost: {k} × {money(price)} = {money(cost)}.",
            f"Change: {money(bill)} - {money(cost)} = {money(bill - cost)}.",
        ]
        return q, steps, money(bill - cost)
    if kind == "share":
        sing, plur = r.choice(ITEMS)
        k = r.randint(2, 12)
        n = r.randint(k, 25 * k)
        each, left = divmod(n, k)
        q = r.choice(
            (
                f"{name} has {n} {plur} and shares them equally among {k} friends. How many does each friend "
                f"get, and how many are left over?",
                f"{n} {plur} are packed into bags of {k}. How many full bags are there and how many {plur} are left?",
            )
        )
        steps = [f"Divide {n} by {k}: {n} ÷ {k} = {each} remainder {left}.", f"Check: {each} × {k} + {left} = {n}."]
        return q, steps, f"{each}, with {left} left over"
    if kind == "distance":
        veh, unit, speed_u = r.choice(VEHICLES)
        speed = r.randint(4, 24) * 5
        hours = Fraction(r.randint(1, 16), r.choice((1, 2, 2, 4)))
        dist = speed * hours
        if not terminates(dist, 1):
            return gen_word(r)
        if r.random() < 0.5:
            q = f"A {veh} travels at {speed} {speed_u} for {decimal(hours)} hours. How far does it go?"
            steps = ["Distance = speed × time.", f"{speed} × {decimal(hours)} = {decimal(dist)} {unit}."]
            return q, steps, f"{decimal(dist)} {unit}"
        q = f"A {veh} covers {decimal(dist)} {unit} at a steady {speed} {speed_u}. How long does the trip take?"
        steps = ["Time = distance ÷ speed.", f"{decimal(dist)} ÷ {speed} = {decimal(hours)} hours."]
        if hours.denominator != 1:
            steps.append(f"That is {int(hours)} hours and {int((hours - int(hours)) * 60)} minutes.")
        return q, steps, f"{decimal(hours)} hours"
    if kind == "wage":
        rate = r.randint(900, 4500) // 25 * 25
        h, d = r.randint(2, 10), r.randint(2, 7)
        q = r.choice(
            (
                f"{name} earns {money(rate)} per hour and works {h} hours a day for {d} days. How much does "
                f"{name} earn in total?",
                f"A job at the {r.choice(PLACES)} pays {money(rate)} an hour. {name} works {h} hours on each of "
                f"{d} days. What are the total earnings?",
            )
        )
        steps = [f"Hours worked: {h} × {d} = {h * d}.", f"Earnings: {h * d} × {money(rate)} = {money(h * d * rate)}."]
        return q, steps, money(h * d * rate)
    if kind == "ages":
        b = r.randint(3, 20)
        k = r.randint(2, 5)
        n = r.randint(1, 12)
        s = (k + 1) * b + 2 * n
        q = (
            f"{name} is {k} times as old as {other}. In {n} years the sum of their ages will be {s}. "
            f"How old is {other} now?"
        )
        steps = [
            f"Let {other}'s age now be x, so {name} is {k}x.",
            f"In {n} years: (x + {n}) + ({k}x + {n}) = {s}, so {k + 1}x + {2 * n} = {s}.",
            f"Subtract {2 * n}: {k + 1}x = {s - 2 * n}. Divide by {k + 1}: x = {b}.",
            f"Check: {other} is {b} and {name} is {k * b}; in {n} years {b + n} + {k * b + n} = {s}.",
        ]
        return q, steps, f"{b} years old"
    if kind == "rectangle":
        length, width = r.randint(3, 60), r.randint(2, 40)
        thing = r.choice(("garden", "room", "playground", "poster", "field", "table top", "parking lot"))
        unit = r.choice(("m", "ft", "cm", "yd"))
        if r.random() < 0.5:
            q = f"A rectangular {thing} is {length} {unit} long and {width} {unit} wide. Find its perimeter and area."
            steps = [
                f"Perimeter = 2 × (length + width) = 2 × ({length} + {width}) = {2 * (length + width)} {unit}.",
                f"Area = length × width = {length} × {width} = {length * width} square {unit}.",
            ]
            return q, steps, f"perimeter {2 * (length + width)} {unit}, area {length * width} square {unit}"
        per = 2 * (length + width)
        q = f"A rectangular {thing} has a perimeter of {per} {unit} and a length of {length} {unit}. How wide is it?"
        steps = [
            f"Perimeter = 2 × (length + width), so length + width = {per} ÷ 2 = {per // 2}.",
            f"Width = {per // 2} - {length} = {width} {unit}.",
        ]
        return q, steps, f"{width} {unit}"
    if kind == "total":
        sing, plur = r.choice(ITEMS)
        a, m, f = r.randint(3, 60), r.randint(2, 30), r.randint(2, 4)
        third = r.choice(NAMES)
        bw = a + m
        cw = f * bw
        word = {2: "twice", 3: "three times", 4: "four times"}[f]
        q = (
            f"{name} has {a} {plur}. {other} has {m} more than {name}. {third} has {word} as many as {other}. "
            f"How many {plur} do they have altogether?"
        )
        steps = [
            f"{other}: {a} + {m} = {bw}.",
            f"{third}: {f} × {bw} = {cw}.",
            f"Altogether: {a} + {bw} + {cw} = {a + bw + cw}.",
        ]
        return q, steps, f"{a + bw + cw} {plur}"
    if kind == "unit":
        sing, plur = r.choice(GOODS)
        unit_price = r.randint(20, 900) // 5 * 5
        k1, k2 = r.sample(range(2, 16), 2)
        q = f"If {k1} {plur} cost {money(k1 * unit_price)}, how much do {k2} {plur} cost?"
        steps = [
            f"One {sing} costs {money(k1 * unit_price)} ÷ {k1} = {money(unit_price)}.",
            f"{k2} {plur} cost {k2} × {money(unit_price)} = {money(k2 * unit_price)}.",
        ]
        return q, steps, money(k2 * unit_price)
    if kind == "recipe":
        amt = Fraction(r.randint(1, 11), r.choice((2, 3, 4, 8)))
        base = r.choice((4, 6, 8, 12, 16, 24))
        want = r.choice([w for w in (2, 3, 6, 9, 10, 18, 20, 30, 36, 40) if w != base])
        ingredient = r.choice(
            ("cup of sugar", "cup of flour", "cup of milk", "teaspoon of salt", "cup of oats", "tablespoon of butter")
        )
        unit_word = ingredient.split(" of ")[0]
        stuff = ingredient.split(" of ")[1]
        food = r.choice(("cookies", "muffins", "pancakes", "servings", "rolls"))
        need = amt * want / base
        q = (
            f"A recipe uses {frac(amt)} {unit_word}{'s' if amt > 1 else ''} of {stuff} for {base} {food}. "
            f"How much {stuff} is needed for {want} {food}?"
        )
        scale = Fraction(want, base)
        shown = f"{want}/{base}" + (f" = {frac(scale)}" if scale.denominator != base else "")
        steps = [f"Scale by {shown}.", f"{frac(amt)} × {frac(Fraction(want, base))} = {frac(need)}."]
        if need.denominator > 1 and need > 1:
            steps.append(f"That is {mixed(need)} {unit_word}s.")
        return q, steps, f"{frac(need)} {unit_word}{'s' if need > 1 else ''}"
    if kind == "average":
        k = r.randint(3, 6)
        vals = [r.randint(40, 100) for _ in range(k)]
        total = sum(vals)
        what = r.choice(("test scores", "daily temperatures", "points in each game", "minutes spent reading"))
        q = f"{name}'s {what} were {', '.join(map(str, vals[:-1]))} and {vals[-1]}. What is the mean?"
        mean = Fraction(total, k)
        shown = decimal(mean, 2) if terminates(mean) else f"{frac(mean)} ≈ {float(mean):.2f}"
        steps = [f"Add them: {' + '.join(map(str, vals))} = {total}.", f"Divide by {k}: {total} ÷ {k} = {shown}."]
        return q, steps, shown
    if kind == "time":
        h, m = r.randint(1, 11), r.choice(range(0, 60, 5))
        dh, dm = r.randint(0, 4), r.choice(range(5, 60, 5))
        pm = r.random() < 0.5
        event = r.choice(("A movie", "A concert", "A football match", "A train journey", "A class", "A hike"))
        start = (h % 12 + (12 if pm else 0)) * 60 + m
        end = start + dh * 60 + dm

        def clock(t: int) -> str:
            t %= 24 * 60
            hh, mm = divmod(t, 60)
            return f"{(hh - 1) % 12 + 1}:{mm:02d} {'pm' if hh >= 12 else 'am'}"

        q = f"{event} starts at {clock(start)} and lasts {dh} hours and {dm} minutes. When does it end?"
        steps = [
            f"Add the hours: {clock(start)} + {dh} hours = {clock(start + dh * 60)}.",
            f"Add the minutes: {clock(start + dh * 60)} + {dm} minutes = {clock(end)}.",
        ]
        return q, steps, clock(end)
    if kind == "consecutive":
        k = r.choice((3, 3, 4, 5))
        first = r.randint(-20, 80)
        s = sum(range(first, first + k))
        terms = " + ".join(["n"] + [f"(n + {i})" for i in range(1, k)])
        q = f"The sum of {k} consecutive integers is {s}. What are the integers?"
        steps = [
            f"Call the smallest n. Then {terms} = {s}.",
            f"So {k}n + {k * (k - 1) // 2} = {s}, {k}n = {s - k * (k - 1) // 2}, n = {first}.",
        ]
        nums = ", ".join(str(first + i) for i in range(k))
        steps.append(f"The integers are {nums}.")
        return q, steps, nums
    sing, plur = r.choice(ITEMS)
    rows, per = r.randint(3, 25), r.randint(3, 25)
    q = r.choice(
        (
            f"There are {rows} rows with {per} {plur} in each row. How many {plur} are there?",
            f"{name} packs {per} {plur} into each of {rows} boxes. How many {plur} is that?",
        )
    )
    steps = [f"Multiply: {rows} × {per} = {rows * per}."]
    return q, steps, f"{rows * per} {plur}"


MATH_KINDS: tuple[tuple[Callable[[random.Random], tuple[str, list[str], str]], int], ...] = (
    (gen_addition, 10),
    (gen_subtraction, 9),
    (gen_multiplication, 10),
    (gen_division, 8),
    (gen_fraction, 14),
    (gen_linear, 16),
    (gen_percent, 12),
    (gen_word, 21),
)


def math_problem(r: random.Random) -> str:
    """One problem with a worked solution, in one of several layouts."""
    gens, weights = zip(*MATH_KINDS, strict=True)
    gen = r.choices(gens, weights)[0]
    question, steps, answer = gen(r)
    head, sol = r.choice(PROBLEM_HEADS), r.choice(SOLUTION_HEADS)
    numbered = r.random() < 0.5
    lines = [f"{head} {question}", sol]
    lines += [f"Step {i}: {s}" if numbered else s for i, s in enumerate(steps, 1)]
    lines.append(r.choice(("Answer:", "Final answer:", "So the answer is", "Result:")) + f" {answer}")
    return "\n".join(lines)


def build_math(seed: int) -> tuple[dict[str, Docs], dict]:
    """Generated problems; each split from its own stream, later splits drop earlier texts."""
    raw: dict[str, Docs] = {}
    for split, budget in (
        ("train", MATH_TRAIN_BYTES),
        ("validation", MATH_HELDOUT_BYTES),
        ("test", MATH_HELDOUT_BYTES),
    ):
        r = rng_for(seed, f"math:{split}")
        docs, size = [], 0
        while size < budget:
            text = math_problem(r)
            docs.append(text)
            size += len(text.encode("utf-8")) + 1
        raw[split] = docs
    splits = make_disjoint(raw)
    info = {
        "source": "generated by scripts/build_corpora.py: column addition/subtraction/multiplication, long "
        "division, fractions, linear equations, percentages and word problems with worked solutions; "
        "one random.Random stream per split, texts seen in an earlier split dropped",
        "generated": {s: len(raw[s]) for s in SPLITS},
        "dropped_as_duplicates": {s: len(raw[s]) - len(splits[s]) for s in SPLITS},
    }
    return splits, info


def heldout_math(seed: str, budget: int = MATH_HELDOUT_BYTES) -> Docs:
    """Fresh problems from a seed nobody else knows: a validator's private held-out data for Proof-of-Loss."""
    r = random.Random(f"heldout:{seed}")
    docs, size = [], 0
    while size < budget:
        docs.append(math_problem(r))
        size += len(docs[-1].encode("utf-8")) + 1
    return docs


# --------------------------------------------------------------------------- output


def heldout_overlap(splits: dict[str, Docs]) -> dict[str, float]:
    """Share of each held-out split's word 5-grams also found in train: boilerplate, not leaked documents."""
    train: set[str] = set()
    for text in splits["train"]:
        train |= shingles(text)
    out = {}
    for split in ("validation", "test"):
        held: set[str] = set()
        for text in splits[split]:
            held |= shingles(text)
        out[split] = round(len(held & train) / max(1, len(held)), 4)
    return out


def gzip_jsonl(texts: Docs) -> bytes:
    """Reproducible gzip bytes: no file name, mtime 0, fixed level."""
    payload = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(payload)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Build every domain, write the files and the manifest, print a size table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for every random choice")
    parser.add_argument("--heldout-math", type=Path, default=None, metavar="FILE",
                        help="only write FILE (.jsonl.gz): fresh math problems from a secret random seed, as a "
                        "validator's private held-out data (python -m swarm.peer --validation-data FILE)")
    args = parser.parse_args(argv)
    if args.heldout_math is not None:
        import secrets

        docs = heldout_math(secrets.token_hex(16))
        args.heldout_math.parent.mkdir(parents=True, exist_ok=True)
        args.heldout_math.write_bytes(gzip_jsonl(docs))
        print(f"wrote {len(docs)} fresh math problems ({nbytes(docs):,} bytes) to {args.heldout_math}")
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    sources = stdlib_files()
    builders = {
        "general": lambda: build_general(args.seed, sources),
        "code": lambda: build_code(args.seed, sources),
        "legal": lambda: build_legal(args.seed),
        "math": lambda: build_math(args.seed),
    }
    manifest: dict = {
        "format": 1,
        "builder": "scripts/build_corpora.py",
        "seed": args.seed,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": sys.platform,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "record": '{"text": ...} per line, UTF-8 JSON, gzip (mtime 0, level 9)',
        "domains": {},
    }
    rows = []
    for domain, build in builders.items():
        splits, info = build()
        info["heldout_5gram_overlap_with_train"] = heldout_overlap(splits)
        entry = {"source": info.pop("source"), "splits": {}, "details": info}
        for split in SPLITS:
            texts = splits[split]
            if not texts:
                raise SystemExit(f"{domain}.{split} came out empty; nothing to ship")
            blob = gzip_jsonl(texts)
            name = f"{domain}.{split}.jsonl.gz"
            (out / name).write_bytes(blob)
            entry["splits"][split] = {
                "file": name,
                "documents": len(texts),
                "text_bytes": nbytes(texts),
                "file_bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
            rows.append((domain, split, len(texts), nbytes(texts), len(blob)))
        manifest["domains"][domain] = entry
        sizes = ", ".join(f"{s} {entry['splits'][s]['documents']} docs" for s in SPLITS)
        print(f"[{domain}] {sizes}; {sum(e['text_bytes'] for e in entry['splits'].values()):,} text bytes", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    print(f"\n{'domain':<8} {'split':<10} {'docs':>7} {'text bytes':>12} {'gz bytes':>10}")
    for domain, split, n, tb, gb in rows:
        print(f"{domain:<8} {split:<10} {n:>7} {tb:>12,} {gb:>10,}")
    print(
        f"{'total':<8} {'':<10} {sum(r[2] for r in rows):>7} {sum(r[3] for r in rows):>12,} "
        f"{sum(r[4] for r in rows):>10,}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
