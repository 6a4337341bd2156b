"""`pope report`: read runs and evals, draw the figures, write report.md, index.html and manifest.json.

The manifest lists every figure with its panels and series as matplotlib drew them, so a reader
(or a test) knows what each PNG shows without looking at pixels.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from pope_cli.shared.outputs import atomic_write_json, atomic_write_text, manifest
from pope_cli.stages.report.config import ReportConfig
from pope_cli.stages.report.figures import draw_evals, draw_training, eval_groups, eval_metrics, training_specs
from pope_cli.stages.report.inputs import EvalData, RunData, load_inputs
from pope_cli.stages.report.page import Code, Heading, Image, Table, Text, markdown, page

EVAL_FIGURE = "evals.png"
KINDS = ("guided", "unguided", "easy")


def _num(value, digits: int = 3) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def _recent_mean(rows: list[dict], key: str, window: int = 1):
    """The mean of the last `window` logged values (a step with no update logs no entropy)."""
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float))][-window:]
    return sum(values) / len(values) if values else None


def runs_table(runs: list[RunData], window: int) -> Table:
    columns = ["run", "steps", *(f"{kind} reward (last {window})" for kind in KINDS),
               "hard solved unguided (ever)", "entropy (last logged)", "response length (last)", "truncated (last)"]
    rows = []
    for run in runs:
        last = run.rows[-1] if run.rows else {}
        rows.append([run.label, str(last.get("step", 0)),
                     *(_num(_recent_mean(run.rows, f"reward/{kind}", window)) for kind in KINDS),
                     str(last.get("solved_unguided/ever", "-")), _num(_recent_mean(run.rows, "entropy")),
                     _num(last.get("response_length"), 1), _num(last.get("truncation_rate"))])
    return Table(columns, rows)


def evals_table(evals: list[EvalData]) -> Table:
    groups = eval_groups(evals)
    metrics = eval_metrics(groups)
    rows = []
    for label, modes in groups.items():
        for mode, values in modes.items():
            cells = []
            for metric in metrics:
                interval = values.get("ci95", {}).get(metric)
                cell = "-" if metric not in values else f"{100 * values[metric]:.1f}"
                cells.append(cell + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else ""))
            rows.append([label, mode, str(values.get("problems", "-")), *cells])
    return Table(["model", "mode", "problems", *(f"{m} % [95% CI]" for m in metrics)], rows)


def completion_blocks(runs: list[RunData], count: int) -> list:
    """The latest `count` logged completions of each run and prompt kind."""
    blocks = []
    for run in runs:
        for kind in KINDS:
            latest = [row for row in run.completions if row["kind"] == kind][-count:] if count else []
            if not latest:
                continue
            blocks.append(Heading(f"{run.label}: {kind} prompts", 3))
            for row in latest:
                cut = ", truncated" if row["truncated"] else ""
                blocks.append(Code(f"step {row['step']} · problem {row['problem_id']} · reward {row['reward']:g} · "
                                   f"{row['length']} tokens{cut}\n…{row['prompt_tail']}\n→ {row['completion']}"))
    return blocks


def run_report(cfg: ReportConfig) -> dict:
    """Write the report in `cfg.out`; returns its manifest."""
    started = time.time()
    runs, evals = load_inputs(cfg.dirs)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    figures, blocks = [], [Heading("pope report", 1),
                           Text(f"{len(runs)} training run(s): {', '.join(r.label for r in runs) or '-'}; "
                                f"{len(evals)} evaluation(s): {', '.join(e.label for e in evals) or '-'}.")]
    if runs:
        blocks += [Heading("Training runs"), runs_table(runs, cfg.smooth)]
        for spec in training_specs(runs):
            drawn = draw_training(spec, runs, out / spec.file, cfg.smooth)
            _keep(drawn, figures, blocks)
    if evals:
        blocks += [Heading("Evaluations"), evals_table(evals)]
        _keep(draw_evals(evals, out / EVAL_FIGURE), figures, blocks)
    _remove_stale_figures(out, figures)
    shown = completion_blocks(runs, cfg.completions)
    if shown:
        blocks += [Heading("Latest logged completions"), *shown]
    atomic_write_text(out / "report.md", markdown(blocks))
    atomic_write_text(out / "index.html", page(blocks, "pope report", out))
    counts = {"runs": len(runs), "evals": len(evals), "figures": len(figures)}
    result = manifest("report", asdict(cfg), started, counts, figures=figures, runs=[r.label for r in runs],
                      evals=[e.label for e in evals])
    atomic_write_json(out / "manifest.json", result)
    return result


def _keep(drawn: dict | None, figures: list, blocks: list) -> None:
    """Record a drawn figure (None: it had nothing to show)."""
    if drawn is not None:
        figures.append(drawn)
        blocks.append(Image(drawn["file"], drawn["title"]))


def _remove_stale_figures(out: Path, figures: list[dict]) -> None:
    """An earlier report's PNGs that this one did not draw (no runs, no evals, a panel nobody logged)
    would sit in a reused folder beside the new report as if they belonged to it."""
    drawn = {figure["file"] for figure in figures}
    for name in {spec.file for spec in training_specs([])} | {EVAL_FIGURE}:
        if name not in drawn:
            (out / name).unlink(missing_ok=True)
