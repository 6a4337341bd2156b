"""Build the toy's shipped held-out set (pope_cli/toy/heldout/) with the demo's own commands.

    python scripts/make_toy_heldout.py [--workers 2]

Runs `pope toy make-data --seed 0` (192 pool problems, then 320 held-out candidates),
`pope filter-hard` on the candidates (k = 128) and `pope make-prefixes` on the ones kept, exactly
as `pope demo --heldout filter` would, then copies hard.jsonl and prefixes.jsonl into the package
with build.json (the commands and the stages' counts). Run it again only when the shipped model,
the task or the demo's sampling settings change: every seed of the claim table must share one set.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

HELDOUT_ROOT = Path(__file__).resolve().parents[1] / "pope_cli"


def main() -> None:
    from pope_cli.stages.demo import DemoConfig, run_phase, stage_commands
    from pope_cli.toy.heldout import BUILD, BUILD_CANDIDATES, BUILD_POOL, BUILD_SEED, HARD, PREFIXES, portable

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="sampling workers (one CPU thread each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cfg = DemoConfig(out=tmp, heldout="filter", seed=BUILD_SEED, n_hard=BUILD_POOL, n_heldout=BUILD_CANDIDATES,
                         parallel=1)
        phases = stage_commands(cfg, out)
        workers = ["--workers", str(args.workers)]
        commands = {"data": phases["data"][0], "filter": [*phases["filter"][1], *workers],
                    "prefixes": [*phases["prefixes"][1], *workers]}
        for name, command in commands.items():
            print(f"pope {' '.join(command[:2])} …", flush=True)
            run_phase(name, [command], out / "logs", parallel=1, threads=1)
        for source, target in ((out / "heldout_filter" / "hard.jsonl", HARD), (out / "heldout_prefixes.jsonl", PREFIXES)):
            target.write_text("".join(json.dumps(portable(json.loads(line)), ensure_ascii=False) + "\n"
                                      for line in source.read_text().splitlines()))
        counts = {"filter": json.loads((out / "heldout_filter" / "manifest.json").read_text())["counts"],
                  "prefixes": json.loads((out / "heldout_prefixes.jsonl.manifest.json").read_text())["counts"]}
    build = {"commands": {name: "pope " + " ".join(c).replace(tmp, "OUT").replace(str(HELDOUT_ROOT), "PKG") for name, c in commands.items()},
             **counts}
    BUILD.write_text(json.dumps(build, indent=2) + "\n")
    print(f"{counts['filter']['hard']} of {counts['filter']['problems']} candidates hard; "
          f"{counts['prefixes']} -> {HARD.parent}")


if __name__ == "__main__":
    main()
