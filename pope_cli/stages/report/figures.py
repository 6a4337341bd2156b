"""The report's figures (matplotlib, no display needed): training curves with one line per run,
and evaluations as grouped bars with 95% intervals.

A training figure is a list of panels, each a metric of metrics.jsonl; a panel no run logged is
left out, and so is a figure with no panel left. Each drawn figure is described by what its axes
hold (panel titles, series labels), read back from matplotlib, for the report's manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pope_cli.stages.report.inputs import EvalData, RunData, labels


@dataclass(frozen=True)
class Panel:
    title: str
    key: str
    ylabel: str
    smoothed: bool = True


@dataclass(frozen=True)
class Spec:
    file: str
    title: str
    panels: tuple[Panel, ...]
    stage: str = "train"
    """The runs it draws: train's (RL) or sft's, whose loss and entropy mean other things."""


TRAINING = (
    Spec("reward.png", "Training reward by prompt kind",
         tuple(Panel(f"{kind} prompts", f"reward/{kind}", "mean reward") for kind in ("guided", "unguided", "easy"))),
    Spec("solved.png", "Hard problems solved unguided",
         (Panel("solved unguided, ever", "solved_unguided/ever", "problems", smoothed=False),
          Panel("solved unguided, this step", "solved_unguided/step", "problems"))),
    Spec("entropy.png", "Token entropy of the sampled completions", (Panel("entropy", "entropy", "nats per token"),)),
    Spec("length.png", "Response length and truncation",
         (Panel("mean response length", "response_length", "tokens"),
          Panel("longest response", "response_length_max", "tokens"),
          Panel("truncated at max-new-tokens", "truncation_rate", "fraction of completions"))),
    Spec("clipping.png", "Clip fractions of the importance ratio",
         (Panel("clipped (either side)", "clip_fraction", "fraction of tokens"),
          Panel("clipped low", "clip_low_fraction", "fraction of tokens"),
          Panel("clipped high", "clip_high_fraction", "fraction of tokens"))),
)
SFT = Spec("sft.png", "Supervised fine-tuning (pope sft)",
           (Panel("loss: NLL of the target tokens", "loss", "nats per token"),
            Panel("token accuracy (argmax = target)", "token_accuracy", "fraction of target tokens"),
            Panel("entropy at the target positions", "entropy", "nats per token"),
            Panel("gradient norm (before clipping)", "grad_norm", "L2 norm")), stage="sft")
CURVES = Spec("curves.png", "Training reward and hard problems solved unguided",
              (Panel("unguided reward", "reward/unguided", "mean reward"),
               Panel("guided reward", "reward/guided", "mean reward"),
               Panel("hard problems solved unguided, ever", "solved_unguided/ever", "problems", smoothed=False)))
"""What `pope demo` draws as its curves.png."""


def logged_keys(runs: list[RunData], prefix: str) -> list[str]:
    """Metric names starting with `prefix` that some run logged a number for, in first-seen order."""
    keys: dict[str, None] = {}
    for run in runs:
        for row in run.rows:
            keys.update({k: None for k, v in row.items() if k.startswith(prefix) and isinstance(v, (int, float))})
    return list(keys)


def training_specs(runs: list[RunData]) -> list[Spec]:
    """The fixed figures, then KL with the sampler/trainer mismatch and evaluations during training, as logged."""
    divergence = [Panel("KL to the starting model (k3)", "kl", "nats per token")]
    divergence += [Panel(key, key, key.split("/")[-1]) for key in logged_keys(runs, "mismatch/")]
    evals = [Panel(key.removeprefix("eval/"), key, key.split("/")[-1], smoothed=False)
             for key in logged_keys(runs, "eval/")]
    return [*TRAINING, Spec("kl.png", "KL and sampler/trainer mismatch", tuple(divergence)),
            Spec("training_eval.png", "Evaluations during training", tuple(evals)), SFT]


def smooth(values: list, window: int) -> list[float]:
    """Trailing mean over the last `window` defined values (None = not logged that step: NaN until one is)."""
    result, seen = [], []
    for value in values:
        if value is not None:
            seen.append(value)
        recent = seen[-window:]
        result.append(sum(recent) / len(recent) if recent else math.nan)
    return result


def has_values(runs: list[RunData], key: str) -> bool:
    return any(isinstance(row.get(key), (int, float)) for run in runs for row in run.rows)


def describe(fig, file: str, title: str) -> dict:
    """The figure as drawn: its file, title and each panel's title and series labels."""
    panels = []
    for ax in fig.axes:
        series = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
        series += [bars.get_label() for bars in ax.containers if not bars.get_label().startswith("_")]
        panels.append({"title": ax.get_title(), "series": series})
    return {"file": file, "title": title, "panels": panels}


def _figure(panels: int, title: str, max_columns: int = 3):
    from matplotlib.figure import Figure

    columns = min(panels, max_columns)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(max(4.6 * columns, 7.5), 3.4 * rows + 0.5), layout="constrained")  # room for the title
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for extra in axes[panels:]:
        fig.delaxes(extra)
    fig.suptitle(title)
    return fig, axes[:panels]


def draw_training(spec: Spec, runs: list[RunData], path: Path, window: int) -> dict | None:
    """One PNG of `spec`'s logged panels, a line per run of its stage; None when none logged any of them."""
    from matplotlib.ticker import MaxNLocator

    runs = [run for run in runs if run.stage == spec.stage]
    panels = [panel for panel in spec.panels if has_values(runs, panel.key)]
    if not panels:
        return None
    title = spec.title + (f" (moving average of {window} steps)" if window > 1 and any(p.smoothed for p in panels) else "")
    fig, axes = _figure(len(panels), title)
    for ax, panel in zip(axes, panels):
        for index, run in enumerate(runs):
            values = [row.get(panel.key) for row in run.rows]
            if not any(isinstance(v, (int, float)) for v in values):
                continue
            values = [v if isinstance(v, (int, float)) else None for v in values]
            steps = [row["step"] for row in run.rows]
            if panel.smoothed:
                ax.plot(steps, smooth(values, window), label=run.label, color=f"C{index}")
            else:  # the logged points joined (evaluations are every --eval-every steps), marked where sparse
                points = [(step, v) for step, v in zip(steps, values) if v is not None]
                ax.plot(*zip(*points), label=run.label, color=f"C{index}",
                        marker="o" if len(points) < len(values) else None, markersize=3)
        ax.set(title=panel.title, xlabel="step", ylabel=panel.ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return describe(fig, path.name, spec.title)


def eval_groups(evals: list[EvalData]) -> dict[str, dict[str, dict]]:
    """Bar group label (the eval dir, plus the model where a dir holds several, named by as much of
    its path as tells it from the others) → mode → metrics."""
    groups = {}
    for data in evals:
        models = data.summary.get("models", {})
        names = labels([Path(model) for model in models], "--model") if len(models) > 1 else [None]
        for name, modes in zip(names, models.values()):
            groups[data.label if name is None else f"{data.label}: {name}"] = modes
    return groups


def eval_metrics(groups: dict[str, dict[str, dict]]) -> list[str]:
    """avg@n, then pass@k by k, as any group reports them."""
    names = {name for modes in groups.values() for metrics in modes.values() for name in metrics
             if name == "avg@n" or name.startswith("pass@")}
    return sorted(names, key=lambda name: (name != "avg@n", int(name[5:]) if name.startswith("pass@") else 0))


def draw_evals(evals: list[EvalData], path: Path) -> dict | None:
    """One panel per metric; on it, a group of bars per model, one bar per mode, with 95% intervals."""
    groups = eval_groups(evals)
    metrics = eval_metrics(groups)
    if not metrics:
        return None
    modes = list(dict.fromkeys(mode for group in groups.values() for mode in group))
    fig, axes = _figure(len(metrics), "Evaluations: % correct, with 95% bootstrap intervals over problems", 4)
    width = 0.8 / len(modes)
    for ax, metric in zip(axes, metrics):
        for m, mode in enumerate(modes):
            xs, heights, errors = [], [], [[], []]
            for g, group in enumerate(groups.values()):
                values = group.get(mode, {})
                if metric not in values:
                    continue
                value = 100 * values[metric]
                low, high = (100 * v for v in values.get("ci95", {}).get(metric, [values[metric]] * 2))
                xs.append(g + (m - (len(modes) - 1) / 2) * width)
                heights.append(value)
                errors[0].append(max(value - low, 0))
                errors[1].append(max(high - value, 0))
            if xs:
                ax.bar(xs, heights, width, yerr=errors, capsize=3, label=mode, color=f"C{m}")
        ax.set_xticks(range(len(groups)), list(groups), rotation=20 if len(groups) > 3 else 0)
        ax.set(title=metric, ylabel="% correct", ylim=(0, 105))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return describe(fig, path.name, "Evaluations")
