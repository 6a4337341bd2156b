"""The live view of `pope demo`: progress read from the commands' log lines, the table it draws,
and the phase runner reporting every job's state to it."""

from __future__ import annotations

import time

from rich.console import Console

from pope_cli.shared.live import Job, LiveView, Status, parse_status
from pope_cli.stages.train.report import step_line


ROW = {"step": 7, "reward/guided": 0.5, "reward/unguided": 0.125, "reward/easy": None, "solved_unguided/step": 1,
       "solved_unguided/ever": 3, "response_length": 12.0, "truncation_rate": 0.0, "entropy": 1.5, "grad_norm": 0.3,
       "lr": 1e-4, "time/generate_s": 1.0, "time/train_s": 0.5}


def test_progress_is_read_from_the_stages_own_log_lines():
    log = "pope train: starting; mode pope\n" + step_line({**ROW, "step": 6}, 20) + "\n" + step_line(ROW, 20) + "\n"
    assert parse_status(log) == Status(7, 20, "steps", "reward g 0.50 u 0.12 e - · hard solved unguided 3")
    assert parse_status("filter-hard: 3/16 problems\nfilter-hard: 9/16 problems\n") == Status(9, 16, "problems")
    assert parse_status("eval: 4/12 units\n") == Status(4, 12, "units")
    assert parse_status("Loading model...\n") is None


def test_the_train_bar_shows_the_steps_reward_per_kind_and_hard_problems_solved():
    import io

    from pope_cli.stages.train.report import StepReporter

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    reporter = StepReporter(20, 0, Terminal())
    reporter.step(ROW)
    assert reporter.progress.tasks[0].description == "reward g 0.50 u 0.12 e - | hard solved unguided 1 this step, 3 ever"
    assert reporter.progress.tasks[0].completed == 7
    reporter.close()


def test_the_view_shows_each_command_with_progress_and_time(tmp_path):
    (tmp_path / "a.log").write_text("filter-hard: 5/10 problems\n")
    (tmp_path / "b.log").write_text("")
    now = time.time()
    jobs = [Job(["filter-hard", "x.jsonl", "--out", str(tmp_path / "filter")], tmp_path / "a.log", started=now - 75),
            Job(["filter-hard", "y.jsonl", "--out", str(tmp_path / "heldout")], tmp_path / "b.log", started=now - 3,
                ended=now - 1, returncode=0),
            Job(["eval", "z.jsonl", "--out", str(tmp_path / "eval")], tmp_path / "c.log")]
    view = LiveView("pope demo", tmp_path)
    console = Console(record=True, width=160)
    console.print(view.table("filter", jobs, now))
    text = console.export_text()
    assert "phase filter" in text
    lines = {line.split("│")[2].strip(): line for line in text.splitlines() if "│ pope " in line}
    assert "5/10 problems" in lines["filter"] and "1:15" in lines["filter"] and "running" in lines["filter"]
    assert "done" in lines["heldout"] and "0:02" in lines["heldout"]
    assert "queued" in lines["eval"]


def test_the_phase_runner_reports_every_job_to_the_watcher(tmp_path):
    from pope_cli.stages.demo import run_phase

    seen = []
    run_phase("ok", [["--help"], ["eval", "--help"], ["train", "--help"]], tmp_path, parallel=2, threads=1,
              watch=lambda phase, jobs: seen.append((phase, [job.state() for job in jobs])))
    assert all(phase == "ok" and len(states) == 3 for phase, states in seen)
    assert seen[-1][1] == ["done", "done", "done"]
    assert any("queued" in states for _, states in seen)  # the third waits for a free slot


def test_a_command_is_named_by_its_first_word_or_its_groups_two():
    from pope_cli.shared.live import command_of

    assert command_of(["train", "prefixes.jsonl", "--out", "runs/pope"]) == "pope train"
    assert command_of(["toy", "make-data", "--out", "data"]) == "pope toy make-data"


def test_the_phase_runner_reports_each_job_once_as_it_succeeds(tmp_path):
    from pope_cli.stages.demo import run_phase

    ended = []
    run_phase("ok", [["--help"], ["eval", "--help"], ["train", "--help"]], tmp_path, parallel=2, threads=1,
              ended=lambda job: ended.append((job.argv[0], job.returncode, job.ended is not None)))
    assert sorted(ended) == [("--help", 0, True), ("eval", 0, True), ("train", 0, True)]
