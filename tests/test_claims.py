"""examples/toy/claims.py: seeds kept from demo runs become the claim table and the figure."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

CLAIMS = Path(__file__).parent.parent / "examples" / "toy" / "claims.py"


def claims_module():
    spec = importlib.util.spec_from_file_location("claims", CLAIMS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(root: Path, seed: int, pope: float, grpo: float, name: str = "run", trained=("pope", "grpo"),
             pool: int = 118, **config) -> Path:
    """A finished demo directory with two arms: unguided avg@n `pope` and `grpo` (fractions)."""
    run = root / f"{name}{seed}"
    arms = {"start": {"unguided": {"avg@n": 0.0}}, "pope": {"unguided": {"avg@n": pope, "pass@16": pope}},
            "grpo": {"unguided": {"avg@n": grpo, "pass@16": grpo}}}
    arms = {arm: arms.get(arm, arms["pope"]) for arm in ("start", *trained)}
    training = {arm: {"hard_solved_unguided_ever": 3, "entropy_last_tenth": 0.5} for arm in trained}
    (run / "runs").mkdir(parents=True)
    results = {"arms": arms, "training": training, "config": {"seed": seed, "arms": list(trained), **config},
               "filter": {"hard": pool}, "commands": [f"pope train {arm}" for arm in trained], "seconds": {"total": 1}}
    (run / "results.json").write_text(json.dumps(results))
    for arm in training:
        (run / "runs" / arm).mkdir()
        rows = [{"step": s, "reward/unguided": 0.1 * s, "solved_unguided/ever": s, "entropy": 1.0, "loss": 0.2}
                for s in (1, 2)]
        (run / "runs" / arm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_kept_seeds_give_the_paired_claims_and_a_figure(tmp_path):
    claims = claims_module()
    seeds = tmp_path / "toy" / "seeds"
    runs = [fake_run(tmp_path, 0, 0.30, 0.10), fake_run(tmp_path, 1, 0.20, 0.25)]
    done = subprocess.run([sys.executable, str(CLAIMS), "--seeds", str(seeds), "add", *map(str, runs)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kept = (seeds / "seed1" / "pope.metrics.jsonl").read_text().splitlines()
    assert json.loads(kept[0]) == {"step": 1, "reward/unguided": 0.1, "solved_unguided/ever": 1, "entropy": 1.0}
    rows = claims.claim_rows(claims.load_seeds(seeds))
    (pope_p1,) = [r for r in rows if r["claim"] == "pope − grpo" and r["metric"] == "unguided/avg@n"]
    # differences +20 and -5 points: mean 7.5, resample means -5, 7.5, 20 with weights 1/4, 1/2, 1/4
    assert pope_p1["mean"] == pytest.approx(7.5) and pope_p1["ci95"] == pytest.approx([-5.0, 20.0])
    assert (pope_p1["agree"], pope_p1["seeds"], pope_p1["paper"]) == (1, 2, "+1.95")
    (easy,) = [r for r in rows if r["claim"] == "grpo-easy − grpo" and r["metric"] == "unguided/avg@n"]
    assert easy["seeds"] == 0 and "no seed yet" in claims.table([easy])
    printed = subprocess.run([sys.executable, str(CLAIMS), "--seeds", str(seeds), "table"], capture_output=True,
                             text=True)
    assert printed.returncode == 0, printed.stderr
    assert "| pope − grpo | unguided/avg@n | +1.95 | +7.50 [-5.00, +20.00] | 1 of 2 |" in printed.stdout
    # the arm table: mean over seeds, then each seed's value (30 and 20 points)
    assert "| pope | 25.0 (30, 20) | 25.0 (30, 20) | – | – | 3.0 (3, 3) |" in printed.stdout
    assert "| start | 0.0 (0, 0) | – | – | – | – |" in printed.stdout
    # no seed holds grpo-easy: its claims are named once, not printed as empty rows
    assert "| grpo-easy − grpo |" not in printed.stdout
    assert "no seed holds the arms of: grpo-easy − grpo, pope-easy − pope," in printed.stdout
    assert (tmp_path / "toy" / "claims.png").read_bytes()[:4] == b"\x89PNG"


def test_seeds_of_another_comparison_are_refused(tmp_path):
    claims = claims_module()
    seeds = tmp_path / "seeds"
    claims.add([fake_run(tmp_path, 0, 0.3, 0.1), fake_run(tmp_path, 1, 0.2, 0.1)], seeds)
    other = json.loads((seeds / "seed1" / "results.json").read_text())
    other["config"]["steps"] = 250
    (seeds / "seed1" / "results.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"seed 1 was run with other settings than seed 0 \(steps\)"):
        claims.load_seeds(seeds)


def test_a_seed_counts_for_a_claim_only_when_it_goes_the_papers_way():
    claims = claims_module()
    directions = {(c[0], c[3]): c[5] for c in claims.CLAIMS}
    # easy problems hurt GRPO in Table 2 (13.55 -> 2.24); a toy gain of +0.11 is against the paper
    assert directions[("grpo-easy − grpo", "unguided/avg@n")] == "-"
    assert directions[("grpo-easy − grpo", "unguided/pass@16")] == "-"  # no pass@16 in the paper: pass@1's way
    assert directions[("pope − grpo", "unguided/pass@16")] == "+"
    # two seeds where grpo-easy - grpo is +0.11 and -3 points: only the second goes the paper's way
    seeds = [{"arms": {"grpo": {"unguided": {"avg@n": 0.1}}, "grpo-easy": {"unguided": {"avg@n": 0.1 + gain / 100}}},
              "training": {}} for gain in (0.11, -3.0)]
    rows = {(r["claim"], r["metric"]): r for r in claims.claim_rows(seeds)}
    assert rows[("grpo-easy − grpo", "unguided/avg@n")]["agree"] == 1
    assert rows[("grpo-easy − grpo", "unguided/avg@n")]["mean"] == pytest.approx(-1.445)


def test_a_run_of_other_arms_joins_its_seed_when_the_pool_is_the_same(tmp_path):
    claims = claims_module()
    seeds = tmp_path / "seeds"
    claims.add([fake_run(tmp_path, 0, 0.3, 0.1, steps=110)], seeds)
    self_arm = fake_run(tmp_path, 0, 0.2, 0, name="self", trained=("pope-self",), steps=110)
    results = json.loads((self_arm / "results.json").read_text())
    results["training"]["pope-self"]["solutions"] = {"solved": 9, "samples": 60000, "tokens": 2700000}
    (self_arm / "results.json").write_text(json.dumps(results))
    claims.add([self_arm], seeds)
    claims.add([self_arm], seeds)  # a second add replaces its own entry
    (kept,) = claims.load_seeds(seeds)
    assert list(kept["arms"]) == ["start", "pope", "grpo", "pope-self"] and kept["config"]["arms"] == ["pope", "grpo"]
    assert [entry["arms"] for entry in kept["added"]] == [["pope-self"]]
    assert kept["added"][0]["commands"] == ["pope train pope-self"] and (seeds / "seed0" / "pope-self.metrics.jsonl").exists()
    rows = claims.claim_rows([kept], claims.SOLUTION_CLAIMS)
    (versus_grpo,) = [r for r in rows if r["claim"] == "pope-self − grpo" and r["metric"] == "unguided/avg@n"]
    assert (versus_grpo["mean"], versus_grpo["agree"]) == (pytest.approx(10.0), 1)
    assert "| 0 | 118 | 9 | 60,000 | 2,700,000 | – | – | – |" in claims.solutions_table([kept])
    with pytest.raises(SystemExit, match="training pool differs from the kept seed's"):
        claims.add([fake_run(tmp_path, 0, 0.2, 0, name="other-pool", trained=("pope-self",), pool=117, steps=110)], seeds)
    with pytest.raises(SystemExit, match=r"other settings than the kept seed \(steps\); only --arms may differ"):
        claims.add([fake_run(tmp_path, 0, 0.2, 0, name="other-steps", trained=("pope-self",), steps=250)], seeds)


def test_the_beyond_claims_state_their_direction_and_the_oracle_table_reads_the_weights():
    claims = claims_module()
    directions = {(c[0], c[3]): c[5] for c in claims.BEYOND_CLAIMS}
    assert directions[("curriculum − grpo", "train/hard_solved_unguided_ever")] == "-"
    assert directions[("clip-higher-offpolicy − grpo-offpolicy", "train/hard_solved_unguided_ever")] == "<="
    # "no loss": a tie agrees, a one-point drop does not
    seeds = [{"arms": {"pope": {"unguided": {"avg@n": 0.4}}, "pope-adaptive": {"unguided": {"avg@n": 0.4 + gain}}},
              "training": {"pope": {"guided_prompts": 7040}, "pope-adaptive": {"guided_prompts": 3000}}}
             for gain in (0.0, -0.01)]
    rows = {(r["claim"], r["metric"]): r for r in claims.claim_rows(seeds, claims.BEYOND_CLAIMS)}
    assert rows[("pope-adaptive − pope", "unguided/avg@n")]["agree"] == 1
    assert rows[("pope-adaptive − pope", "train/guided_prompts")]["mean"] == -4040
    assert rows[("luffy − pope", "unguided/avg@n")]["seeds"] == 0
    seed = {"config": {"seed": 3}, "training": {"offpolicy": {"oracle_weight_mean": 0.91234, "oracle_weight_max": 1.0,
                                                           "oracle_clip_fraction": 0.0, "oracle_loss_share": 0.25,
                                                           "oracle_entropy_last_tenth": 0.00123, "oracle_reward": 1.0},
                                             "grpo": {}}}
    assert claims.oracle_table([seed]).splitlines()[2] == "| 3 | offpolicy | 0.912 | 1.000 | 0.000 | 0.250 | 0.0012 | 1.00 |"
    seed["training"].update({"pope": {"guided_prompts": 880}, "pope-adaptive": {"guided_prompts": 706, "guided_skipped": 174,
                                                                              "prefix_fraction_mean": 0.47843}})
    assert claims.guidance_table([seed]).splitlines()[2] == "| 3 | – | 706, 174, 0.478 | – |"


def test_each_seeds_directory_writes_its_own_figures_and_the_beyond_arms_get_theirs():
    claims = claims_module()
    curves = {arm: [] for arm in ("grpo", "pope", "sft-grpo", "pope-self", "luffy", "pope-anneal")}
    seeds = [{"curves": curves}, {"curves": {arm: [] for arm in curves if arm != "pope-anneal"}}]
    assert claims.figures(seeds, "seeds") == {"claims.png": ["grpo", "pope", "sft-grpo", "pope-self"],
                                              "beyond.png": ["grpo", "pope", "luffy"]}
    assert claims.figures(seeds[1:], "seeds-terse")["claims-terse.png"] == ["grpo", "pope", "sft-grpo", "pope-self"]
    assert list(claims.figures([{"curves": {"grpo": []}}], "seeds")) == ["claims.png"]


def test_an_arm_the_seed_holds_gains_only_the_facts_of_the_same_run_and_is_never_replaced(tmp_path, capsys):
    claims = claims_module()
    seeds = tmp_path / "seeds"
    claims.add([fake_run(tmp_path, 0, 0.3, 0.1)], seeds)
    curve = (seeds / "seed0" / "pope.metrics.jsonl").read_bytes()
    again = fake_run(tmp_path, 0, 0.3, 0.1, name="again", trained=("pope", "luffy"))
    results = json.loads((again / "results.json").read_text())
    results["training"]["pope"].update(guided_prompts=880, hard_solved_unguided_ever=99)
    (again / "results.json").write_text(json.dumps(results))
    claims.add([again], seeds)
    (kept,) = claims.load_seeds(seeds)
    # the same held-out numbers: the kept facts stay, the rerun's new fact joins them
    assert kept["training"]["pope"] == {"hard_solved_unguided_ever": 3, "entropy_last_tenth": 0.5, "guided_prompts": 880}
    assert (kept["added"][0]["new"], kept["added"][0]["again"]) == (["luffy"], ["pope"])
    other = fake_run(tmp_path, 0, 0.25, 0.1, name="other", trained=("pope", "offpolicy"))
    claims.add([other], seeds)
    (kept,) = claims.load_seeds(seeds)
    assert kept["arms"]["pope"]["unguided"]["avg@n"] == 0.3 and "offpolicy" in kept["arms"]
    assert (seeds / "seed0" / "pope.metrics.jsonl").read_bytes() == curve
    assert "pope is kept already" in capsys.readouterr().out


def test_an_arm_named_to_replace_takes_the_new_runs_numbers_facts_and_curve(tmp_path):
    claims = claims_module()
    seeds = tmp_path / "seeds"
    claims.add([fake_run(tmp_path, 0, 0.3, 0.1)], seeds)
    fixed = fake_run(tmp_path, 0, 0.45, 0.1, name="fixed", trained=("pope",))
    results = json.loads((fixed / "results.json").read_text())
    results["training"]["pope"] = {"guided_prompts": 440}
    (fixed / "results.json").write_text(json.dumps(results))
    rows = [{"step": 1, "reward/unguided": 0.9, "solved_unguided/ever": 7, "entropy": 0.4}]
    (fixed / "runs" / "pope" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    subprocess.run([sys.executable, str(CLAIMS), "--seeds", str(seeds), "add", "--replace", "pope", str(fixed)],
                   check=True, capture_output=True)
    (kept,) = claims.load_seeds(seeds)
    assert kept["arms"]["pope"]["unguided"]["avg@n"] == 0.45 and kept["arms"]["grpo"]["unguided"]["avg@n"] == 0.1
    assert kept["training"]["pope"] == {"guided_prompts": 440}
    assert (kept["added"][0]["new"], kept["added"][0]["again"], kept["added"][0]["replaced"]) == ([], [], ["pope"])
    assert json.loads((seeds / "seed0" / "pope.metrics.jsonl").read_text())["reward/unguided"] == 0.9
