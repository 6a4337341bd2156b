"""The toy's shipped held-out set: hard problems the shipped model never solves in 128 samples.

`hard.jsonl` holds the problems, `prefixes.jsonl` their guided prompts' prefixes (make-prefixes'
shortest solving prefix), `build.json` the commands that made them and their counts. They were
made once by `python scripts/make_toy_heldout.py`, with the demo's own filter-hard and
make-prefixes commands on the 320 held-out candidates of `pope toy make-data --seed 0 --n-hard 192`
(seed 0's hard problems after its first 192; the demo's pool takes the first 160, so seed 0's
pool and this set are disjoint by construction), the way the toy model itself is pretrained
once and shipped: the set is the same for every demo run, so no run pays for filtering it.
tests/test_toy_heldout.py rebuilds the first candidates and checks they give these rows.
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
