"""The toy's shipped held-out set: hard problems the shipped model never solves in 128 samples.

`hard.jsonl` holds the problems, `prefixes.jsonl` their guided prompts' prefixes (make-prefixes'
shortest solving prefix), `build.json` the commands that made them and their counts. They were
made once by `python scripts/make_toy_heldout.py`, with the demo's own filter-hard and
make-prefixes commands on the 320 held-out candidates of `pope toy make-data --seed 0 --n-hard 192`
(seed 0's hard problems after its first 192; the demo's pool takes the first 160, so seed 0's
pool and this set are disjoint by construction), the way the toy model itself is pretrained
once and shipped: the set is the same for every demo run, so no run pays for filtering it.
tests/test_toy_heldout.py rebuilds the first candidates and checks they give these rows.

A prefixes row names the guided template it was found with, and every row the unguided template
filter-hard asked it with; the shipped rows name the toy's templates relative to the repository
(`pope_cli/toy/templates/guided.txt`, `.../unguided.txt`) instead of the build machine's absolute
paths, so give `--template` and `--unguided-template` when evaluating on them outside the
repository's root (the demo does).
"""

from __future__ import annotations

from pathlib import Path

HELDOUT_DIR = Path(__file__).parent
HARD = HELDOUT_DIR / "hard.jsonl"
PREFIXES = HELDOUT_DIR / "prefixes.jsonl"
BUILD = HELDOUT_DIR / "build.json"
BUILD_SEED = 0
BUILD_POOL = 192
BUILD_CANDIDATES = 320


def portable(row: dict) -> dict:
    """A row with its templates named relative to the repository, not to this machine."""
    row = dict(row)
    for field in ("template", "unguided_template"):
        template = row.get(field)
        if template and Path(template).is_absolute() and HELDOUT_DIR.parents[1] in Path(template).parents:
            row[field] = str(Path(template).relative_to(HELDOUT_DIR.parents[2]))
    return row
