"""The paper's claims over seeds of `pope demo --full`: paired differences, intervals, a figure.

    python examples/toy/claims.py add RUN_DIR [RUN_DIR ...]   # keep a finished seed
    python examples/toy/claims.py add --replace ARM RUN_DIR    # a changed arm's run replaces the kept one
    python examples/toy/claims.py table                        # the claim table and claims.png

(`--seeds DIR` before the action reads and writes another seeds directory.)

`add` copies a run's `results.json` and, per training arm, the metric columns the figure needs
into `examples/toy/seeds/seed<N>/`, so that seeds run at different times accumulate instead of
being rerun. A run of other arms with the same settings and the same seed (`pope demo --arms
pope-self,pope-teacher --seed N`) is merged into that seed's kept results: its arms join the
seed's, provided its training pool came out the same (filter-hard's counts), and its own commands,
times and start-model numbers are kept under `added`. `table` reads every kept seed, prints every arm's held-out numbers and training
count (the mean over seeds with each seed's value), then the markdown claim table (each claim: the
paper's difference, the toy's mean paired difference with its 95% bootstrap interval over seeds,
and in how many seeds the difference goes the paper's way), and writes `claims.png` (the paper's
arms and the found-solution ones: unguided training reward, hard problems ever solved unguided,
token entropy per step; mean over seeds) and, once every seed holds them, `beyond.png` (the arms
beyond the paper's table against grpo and pope); `--seeds seeds-terse` writes `claims-terse.png`. Where the seeds hold their arms, it also prints the found-solution claims (`pope-self`,
`pope-teacher`, with what make-solutions found) and the claims beyond the paper's table (off-policy
RL, LUFFY, the curriculum, clip-higher on off-policy steps, adaptive and annealed guidance), with
the oracle tokens' weights per seed. Nothing is recomputed: the numbers are the demo's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from pope_cli.shared.paired import paired_difference

HERE = Path(__file__).parent
SEEDS = HERE / "seeds"
CURVE_KEYS = ("step", "reward/unguided", "solved_unguided/ever", "entropy")

# (claim, treated arm, reference arm, metric, the paper's difference in points or words, the
# paper's direction). Metrics: "unguided/avg@n" etc. are held-out eval numbers (x100);
# "train/<fact>" training facts. Direction: "+" treated above reference, "-" below, "<=" not above
# ("no gain": a tie agrees with the paper).
PAPER_P1 = {"grpo": 13.55, "pope": 15.50, "grpo-easy": 2.24, "pope-easy": 13.98, "sft-grpo": 2.00, "rs-sft-grpo": 5.14}
PAPER_P16 = {"grpo": 32.89, "pope": 42.53, "pope-easy": 36.42, "sft-grpo": 12.37, "rs-sft-grpo": 24.50}


def _paper(table: dict, treated: str, reference: str) -> str:
    if treated in table and reference in table:
        return f"{table[treated] - table[reference]:+.2f}"
    return "–"


def _direction(table: dict, treated: str, reference: str) -> str | None:
    if treated in table and reference in table:
        return "+" if table[treated] > table[reference] else "-"
    return None


PAIRS = (("pope", "grpo"), ("grpo-easy", "grpo"), ("pope-easy", "pope"), ("sft-grpo", "grpo"), ("rs-sft-grpo", "grpo"))
# Where Table 2 has no pass@16 for a pair, the paper's pass@1 direction stands for it.
CLAIMS = [
    *[(f"{t} − {r}", t, r, metric, _paper(table, t, r), _direction(table, t, r) or _direction(PAPER_P1, t, r))
      for t, r in PAIRS
      for metric, table in (("unguided/avg@n", PAPER_P1), ("unguided/pass@16", PAPER_P16))],
    ("pope-no-restate − pope", "pope-no-restate", "pope", "unguided/avg@n", "lower (text)", "-"),
    ("pope-no-restate (own template) − pope, guided", "pope-no-restate", "pope",
     "guided_own_template/avg@n vs guided/avg@n", "higher (text)", "+"),
    ("entropy − grpo", "entropy", "grpo", "train/entropy_last_tenth", "entropy blows up (text)", "+"),
    ("entropy − grpo", "entropy", "grpo", "train/hard_solved_unguided_ever", "no gain (text)", "<="),
    ("clip-higher − grpo", "clip-higher", "grpo", "train/entropy_last_tenth", "entropy blows up (text)", "+"),
    ("clip-higher − grpo", "clip-higher", "grpo", "train/hard_solved_unguided_ever", "no gain (text)", "<="),
]
# POPE without written solutions (not in the paper; the expectation is stated instead): the
# start model's own successes guide fewer problems than the oracle does, but more than none;
# the toy teacher's verified traces are the oracle's own text, so they should change nothing.
SOLUTION_CLAIMS = [
    *[(f"pope-self − {reference}", "pope-self", reference, metric, expectation, direction)
      for reference, expectation, direction in (("grpo", "above (PrefixRL)", "+"), ("pope", "below (fewer guided)", "-"),
                                                ("pope-teacher", "below (fewer guided)", "-"))
      for metric in ("unguided/avg@n", "unguided/pass@16")],
    ("pope-self − grpo", "pope-self", "grpo", "train/hard_solved_unguided_ever", "above (PrefixRL)", "+"),
    *[(f"pope-teacher − {reference}", "pope-teacher", reference, metric, expectation, direction)
      for reference, expectation, direction in (("grpo", "above (a teacher's traces)", "+"),
                                                ("pope", "none (the same prefixes)", "<="))
      for metric in ("unguided/avg@n", "unguided/pass@16")],
]

# The seed's remaining comparisons (the summary's section on why curriculum and offline data fail;
# clip-higher on off-policy steps for the arm and its reference alike) and guidance that adapts
# (not in the paper: BREAD/Guide-GRPO and UFT's expectation that less guidance loses nothing).
BEYOND_CLAIMS = [
    ("offpolicy − grpo", "offpolicy", "grpo", "unguided/avg@n", "training failure (summary)", "-"),
    ("offpolicy − grpo", "offpolicy", "grpo", "train/entropy_last_tenth", "entropy collapse (summary)", "-"),
    ("luffy − grpo", "luffy", "grpo", "unguided/avg@n", "above (LUFFY's paper)", "+"),
    ("luffy − pope", "luffy", "pope", "unguided/avg@n", "below (oracle as exploration, not target)", "-"),
    ("luffy − offpolicy", "luffy", "offpolicy", "train/entropy_last_tenth", "above (shaping keeps entropy)", "+"),
    ("curriculum − grpo", "curriculum", "grpo", "unguided/avg@n", "below (ray interference)", "-"),
    ("curriculum − grpo", "curriculum", "grpo", "train/hard_solved_unguided_ever", "below (ray interference)", "-"),
    ("clip-higher-offpolicy − grpo-offpolicy", "clip-higher-offpolicy", "grpo-offpolicy", "train/entropy_last_tenth",
     "entropy blows up (text)", "+"),
    ("clip-higher-offpolicy − grpo-offpolicy", "clip-higher-offpolicy", "grpo-offpolicy",
     "train/hard_solved_unguided_ever", "no gain (text)", "<="),
    ("pope-adaptive − pope", "pope-adaptive", "pope", "unguided/avg@n", "no loss (BREAD)", ">="),
    ("pope-adaptive − pope", "pope-adaptive", "pope", "train/guided_prompts", "fewer guided rollouts", "-"),
    ("pope-anneal − pope", "pope-anneal", "pope", "unguided/avg@n", "no loss (UFT)", ">="),
    ("pope-anneal − pope", "pope-anneal", "pope", "train/prefix_fraction_mean", "less of the solution shown", "-"),
]


def add(runs: list[Path], root: Path = SEEDS, replace: tuple[str, ...] = ()) -> None:
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        target = root / f"seed{results['config']['seed']}"
        target.mkdir(parents=True, exist_ok=True)
        kept = target / "results.json"
        arms = list(results["training"])
        if kept.exists() and not set(json.loads(kept.read_text())["training"]) <= set(results["training"]):
            joined = merged(json.loads(kept.read_text()), results, replace)
            kept.write_text(json.dumps(joined, indent=2) + "\n")
            arms = joined["added"][-1]["new"] + joined["added"][-1].get("replaced", [])
        else:
            shutil.copyfile(run / "results.json", kept)
        for arm in arms:
            rows = [json.loads(line) for line in (run / "runs" / arm / "metrics.jsonl").read_text().splitlines()]
            (target / f"{arm}.metrics.jsonl").write_text(
                "".join(json.dumps({k: row.get(k) for k in CURVE_KEYS}) + "\n" for row in rows))
        print(f"kept {run} as {target}")


LATER_OPTIONS = {"suite": None, "oracle_style": "steps"}
"""Demo options added after the first seeds ran, at the value those seeds had."""


def _setting(results: dict, *also: str) -> dict:
    config = {**LATER_OPTIONS, **results["config"]}
    return {k: v for k, v in config.items() if k not in ("seed", "out", "overwrite", "parallel", *also)}


def merged(kept: dict, added: dict, replace: tuple[str, ...] = ()) -> dict:
    """A seed's kept results with another run's arms joined in (the same settings but its arms, the
    same training pool); the kept run's config, commands and start-model numbers stay as they were.

    An arm the seed holds already keeps its kept run. When the other run's held-out numbers for it
    are the kept ones exactly (the same run again), the training facts only the other run logged
    join the kept facts; when they differ, the other run's arm is left out, since a rerun is another
    draw and the kept tables must not change under a merge. Only an arm named in `replace` (one whose
    code changed, so that the kept run is of another method) takes the other run's numbers and facts
    in place of the kept ones; the entry names it under `replaced`."""
    differ = sorted(k for k in set(_setting(kept, "arms", "full")) | set(_setting(added, "arms", "full"))
                    if _setting(kept).get(k) != _setting(added).get(k))
    if differ:
        raise SystemExit(f"error: {added['config'].get('out')} was run with other settings than the kept seed "
                         f"({', '.join(differ)}); only --arms may differ")
    if kept["filter"] != added["filter"]:
        raise SystemExit(f"error: {added['config'].get('out')}'s training pool differs from the kept seed's "
                         f"(filter-hard {added['filter']} against {kept['filter']})")
    arms = list(added["training"])
    new = [arm for arm in arms if arm not in kept["training"]]
    replaced = [arm for arm in arms if arm in kept["training"] and arm in replace]
    again = [arm for arm in arms if arm in kept["training"] and arm not in replace
             and added["arms"][arm] == kept["arms"][arm]]
    for arm in sorted(set(arms) - set(new) - set(again) - set(replaced)):
        print(f"note: {arm} is kept already and {added['config'].get('out')}'s run of it differs; "
              "the kept run stays")
    taken = new + replaced
    result = {**kept, "arms": {**kept["arms"], **{arm: added["arms"][arm] for arm in taken}},
              "training": {**kept["training"], **{arm: added["training"][arm] for arm in taken},
                           **{arm: {**added["training"][arm], **kept["training"][arm]} for arm in again}}}
    entry = {"arms": arms, "new": new, "again": again, **({"replaced": replaced} if replaced else {}),
             "start": added["arms"]["start"],
             "commands": added["commands"], "seconds": added["seconds"], "cpu_seconds": added.get("cpu_seconds")}
    result["added"] = [e for e in kept.get("added", []) if e["arms"] != arms] + [entry]
    return result


def load_seeds(root: Path = SEEDS) -> list[dict]:
    seeds = []
    for directory in sorted(root.glob("seed*"), key=lambda p: int(p.name[4:])):
        results = json.loads((directory / "results.json").read_text())
        results["curves"] = {arm: [json.loads(line) for line in (directory / f"{arm}.metrics.jsonl").read_text().splitlines()]
                             for arm in results["training"]}
        seeds.append(results)
    require_one_comparison(seeds)
    return seeds


def require_one_comparison(seeds: list[dict]) -> None:
    """Every seed must come from the same demo settings (its seed and output aside): a table that
    mixed budgets or data sizes would compare nothing."""
    first = _setting(seeds[0])
    for results in seeds[1:]:
        differ = sorted(k for k in set(first) | set(_setting(results)) if first.get(k) != _setting(results).get(k))
        if differ:
            raise SystemExit(f"error: seed {results['config']['seed']} was run with other settings than seed "
                             f"{seeds[0]['config']['seed']} ({', '.join(differ)}); keep one comparison per seeds "
                             "directory (--seeds DIR)")


def metric(results: dict, arm: str, name: str) -> float | None:
    """One arm's number in one seed: eval metrics in points (x100), training facts as logged."""
    group, key = name.split("/", 1)
    if group == "train":
        return results["training"].get(arm, {}).get(key)
    value = results["arms"].get(arm, {}).get(group, {}).get(key)
    return None if value is None else 100 * value


def claim_rows(seeds: list[dict], claims: list[tuple] = CLAIMS) -> list[dict]:
    rows = []
    for claim, treated, reference, name, paper, direction in claims:
        # "A vs B": the treated arm's metric A against the reference arm's B (its own template
        # against the default one); otherwise the same metric for both.
        treated_name, _, reference_name = name.partition(" vs ")
        pairs = [(metric(s, treated, treated_name), metric(s, reference, reference_name or treated_name))
                 for s in seeds]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        row = {"claim": claim, "metric": name, "paper": paper, "seeds": len(pairs)}
        if pairs:
            row.update(paired_difference([a for a, _ in pairs], [b for _, b in pairs], direction))
        rows.append(row)
    return rows


def held_claims(seeds: list[dict], claims: list[tuple]) -> tuple[list[tuple], list[str]]:
    """The claims both of whose arms some seed holds, and the names of the others (a seeds
    directory of a few arms, like the terse variant's, would otherwise print rows of nothing)."""
    held = {arm for s in seeds for arm in s["arms"]}
    kept = [c for c in claims if c[1] in held and c[2] in held]
    return kept, list(dict.fromkeys(c[0] for c in claims if c not in kept))


def print_claims(seeds: list[dict], claims: list[tuple], expected: str = "paper") -> None:
    kept, left_out = held_claims(seeds, claims)
    if kept:
        print(table(claim_rows(seeds, kept), expected))
    if left_out:
        print("\nno seed holds the arms of: " + ", ".join(left_out))


def table(rows: list[dict], expected: str = "paper") -> str:
    way = "the paper's way" if expected == "paper" else "the expected way"
    lines = [f"| claim | metric | {expected} | toy: mean paired difference [95% CI] | seeds going {way} |",
             "|---|---|---|---|---|"]
    for row in rows:
        toy = f"{row['mean']:+.2f} [{row['ci95'][0]:+.2f}, {row['ci95'][1]:+.2f}]" if "mean" in row else "no seed yet"
        holding = f"{row['agree']} of {row['seeds']}" if "mean" in row else "–"
        lines.append(f"| {row['claim']} | {row['metric']} | {row['paper']} | {toy} | {holding} |")
    return "\n".join(lines)


ARM_COLUMNS = (("unguided/avg@n", "unguided avg@16"), ("unguided/pass@16", "unguided pass@16"),
               ("guided/avg@n", "guided avg@16"), ("guided/pass@16", "guided pass@16"),
               ("train/hard_solved_unguided_ever", "pool problems solved in training"))


def arm_table(seeds: list[dict]) -> str:
    """Every arm's numbers: the mean over seeds, each seed's value after it (seed order)."""
    lines = ["| arm | " + " | ".join(title for _, title in ARM_COLUMNS) + " |", "|---" * (len(ARM_COLUMNS) + 1) + "|"]
    for arm in seeds[0]["arms"]:
        cells = []
        for name, _ in ARM_COLUMNS:
            values = [metric(s, arm, name) for s in seeds]
            values = [v for v in values if v is not None]
            each = ", ".join(f"{v:.0f}" for v in values)
            cells.append(f"{statistics.mean(values):.1f} ({each})" if values else "–")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def solutions_table(seeds: list[dict]) -> str:
    """What make-solutions found per seed for the arms that use it: solved of the hard pool, samples, tokens."""
    lines = ["| seed | hard pool | self: solved | self: samples | self: tokens | teacher: solved | teacher: samples "
             "| teacher: tokens |", "|---" * 8 + "|"]
    for s in seeds:
        cells = []
        for arm in ("pope-self", "pope-teacher"):
            found = s["training"].get(arm, {}).get("solutions")
            cells += [f"{found['solved']}", f"{found['samples']:,}", f"{found['tokens']:,}"] if found else ["–"] * 3
        lines.append(f"| {s['config']['seed']} | {s['filter']['hard']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ORACLE_ARMS = ("offpolicy", "luffy")
ORACLE_FACTS = (("oracle_weight_mean", "weight mean", ".3f"), ("oracle_weight_max", "weight max", ".3f"),
                ("oracle_clip_fraction", "clipped", ".3f"), ("oracle_loss_share", "loss share", ".3f"),
                ("oracle_entropy_last_tenth", "entropy (last tenth)", ".4f"), ("oracle_reward", "reward", ".2f"))


def oracle_table(seeds: list[dict]) -> str:
    """The oracle tokens of the off-policy arms per seed: importance weights r_t = pi_theta(o_t)
    (behaviour probability 1), the share the clip stopped, their part of the loss, their entropy."""
    lines = ["| seed | arm | " + " | ".join(title for _, title, _ in ORACLE_FACTS) + " |",
             "|---" * (len(ORACLE_FACTS) + 2) + "|"]
    for s in seeds:
        for arm in (a for a in ORACLE_ARMS if a in s["training"]):
            facts = s["training"][arm]
            cells = [format(facts[key], spec) if facts.get(key) is not None else "–" for key, _, spec in ORACLE_FACTS]
            lines.append(f"| {s['config']['seed']} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


GUIDANCE_ARMS = ("pope", "pope-adaptive", "pope-anneal")


def guidance_table(seeds: list[dict]) -> str:
    """How much guidance each POPE arm used per seed: guided prompts trained, guided copies the
    adaptive rule skipped, the mean share of the solution shown ("–": the kept run predates the fact)."""
    lines = ["| seed | " + " | ".join(f"{arm}: guided, skipped, shown" for arm in GUIDANCE_ARMS) + " |",
             "|---" * (len(GUIDANCE_ARMS) + 1) + "|"]
    for s in seeds:
        cells = []
        for arm in GUIDANCE_ARMS:
            facts = s["training"].get(arm, {})
            fraction = facts.get("prefix_fraction_mean")
            cells.append(f"{facts['guided_prompts']}, {facts['guided_skipped']}, {fraction:.3f}"
                         if "guided_skipped" in facts and fraction is not None else "–")
        lines.append(f"| {s['config']['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(seeds: list[dict], arms: list[str], path: Path) -> None:
    """The arms' curves, mean over seeds (grpo and pope first in every figure, so in the same colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pope_cli.stages.report.figures import smooth

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = (("reward/unguided", "unguided training reward (10-step mean)"),
              ("solved_unguided/ever", "hard problems ever solved unguided"),
              ("entropy", "token entropy (nats, log scale)"))
    # tab20's strong hues first, then their light pairs: the first ten arms share no hue.
    palette = plt.get_cmap("tab20").colors[0::2] + plt.get_cmap("tab20").colors[1::2]
    for index, arm in enumerate(arms):
        for ax, (key, title) in zip(axes, panels):
            series = [[row.get(key) for row in s["curves"][arm]] for s in seeds]
            mean = [statistics.mean(v for v in step if v is not None) if any(v is not None for v in step) else None
                    for step in zip(*series)]
            steps = [row["step"] for row in seeds[0]["curves"][arm]]
            # Entropy is logged only on steps that train (a step without signal has no update).
            ax.plot(steps, smooth(mean, 10) if key != "solved_unguided/ever" else mean,
                    color=palette[index % len(palette)], label=arm)
            ax.set(title=title, xlabel="RL step")
    # The entropy bonus's ~5.5 nats would flatten every other arm's ~0.02 to a line at zero.
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"mean over {len(seeds)} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=Path, default=SEEDS, help="the kept seeds (default: examples/toy/seeds)")
    sub = parser.add_subparsers(dest="action", required=True)
    adding = sub.add_parser("add", help="keep finished `pope demo --full` runs as seeds")
    adding.add_argument("runs", nargs="+", type=Path)
    adding.add_argument("--replace", default="", metavar="ARM[,ARM]",
                        help="arms whose kept runs these runs replace (the arm's code changed since)")
    sub.add_parser("table", help="print the claim table and write claims.png")
    args = parser.parse_args()
    if args.action == "add":
        add(args.runs, args.seeds, tuple(arm for arm in args.replace.split(",") if arm))
        return
    seeds = load_seeds(args.seeds)
    if not seeds:
        raise SystemExit(f"error: no seed under {args.seeds}; run `pope demo --full --seed N` and `claims.py add RUN` "
                         "first")
    print(f"{len(seeds)} seed(s): " + ", ".join(str(s["config"]["seed"]) for s in seeds) + "\n")
    print(arm_table(seeds) + "\n")
    print_claims(seeds, CLAIMS)
    if any(arm in s["training"] for s in seeds for arm in ("pope-self", "pope-teacher")):
        print("\n" + solutions_table(seeds) + "\n")
        print_claims(seeds, SOLUTION_CLAIMS, expected="expected")
    if any(arm in s["training"] for s in seeds for _, arm, *_ in BEYOND_CLAIMS):
        print()
        print_claims(seeds, BEYOND_CLAIMS, expected="expected")
        print("\n" + oracle_table(seeds))
        print("\n" + guidance_table(seeds))
    for name, arms in figures(seeds, args.seeds.name).items():
        plot(seeds, arms, args.seeds.parent / name)


def figures(seeds: list[dict], seeds_name: str) -> dict[str, list[str]]:
    """The figures of one seeds directory, each named after it (`seeds-terse` → `claims-terse.png`):
    the paper's arms with the found-solution ones, and the beyond arms against grpo and pope, each
    of the arms every seed holds."""
    from pope_cli.stages.demo import SUITES

    suffix = seeds_name.removeprefix("seeds")
    everywhere = [arm for arm in seeds[0]["curves"] if all(arm in s["curves"] for s in seeds)]
    beyond = [arm for arm in everywhere if arm in SUITES["beyond"] and arm not in ("pope-self", "pope-teacher")]
    paper = [arm for arm in everywhere if arm not in beyond]
    result = {f"claims{suffix}.png": paper}
    if beyond:
        result[f"beyond{suffix}.png"] = [arm for arm in ("grpo", "pope") if arm in paper] + beyond
    return result


if __name__ == "__main__":
    main()
