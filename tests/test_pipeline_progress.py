"""The pipeline's progress line: ETA from the stamps of earlier runs and the stages finished so far."""

from pathlib import Path

from commons.io import write_json
from recipes.pipeline import Progress, Stage, _stamp_path, _still_to_run, independent_batches, stamped_totals


def stage(name, group, depends=()):
    return Stage(group, name, name, ["python"], [], depends=list(depends))


def test_eta_uses_last_durations_then_group_means_and_says_when_it_cannot(tmp_path: Path):
    stages = [stage("link", "link"), stage("ft a", "finetune", ["link"]), stage("ft b", "finetune", ["link"]),
              stage("eval", "eval", ["ft a", "ft b"])]
    write_json(_stamp_path(tmp_path, stages[0]), {"seconds": 30.0, "finished": "yes"})
    write_json(_stamp_path(tmp_path, stages[1]), {"seconds": 100.0, "finished": None})  # killed: no estimate
    progress = Progress(tmp_path, stages)
    line = progress.line(1, stages)
    assert "stage 1/4, 4 left to run" in line and "ETA >= 0:00:30 (no estimate yet for: eval, finetune)" in line
    progress.finished(stages[1], 200.0)
    # ft b: the mean of the finished fine-tunes; eval still unknown.
    assert "ETA >= 0:03:20 (no estimate yet for: eval)" in progress.line(3, stages[2:])
    progress.finished(stages[2], 400.0)
    write_json(_stamp_path(tmp_path, stages[3]), {"seconds": 61.0, "finished": "yes"})
    assert "no estimate yet for: eval" in progress.line(4, stages[3:])  # stamps are read at start
    assert Progress(tmp_path, stages).line(4, stages[3:]).endswith("ETA 0:01:01")


def test_stages_reading_a_rerun_stage_count_as_still_to_run():
    stages = [stage("link", "link"), stage("ft a", "finetune", ["link"]), stage("eval", "eval", ["ft a"]),
              stage("other", "finetune")]
    fresh = set()  # nothing stale: only the current stage and what reads it, directly or not
    assert [s.name for s in _still_to_run(stages, set(), lambda s: s.name in fresh)] == ["link", "ft a", "eval"]
    assert [s.name for s in _still_to_run(stages[3:], set(), lambda s: False)] == ["other"]


def test_batches_hold_consecutive_stages_that_read_nothing_of_each_other():
    stages = [stage("build", "build"), stage("medtok", "medtok", ["build"]), stage("link", "link", ["build"]),
              stage("ft a", "finetune", ["link", "medtok"]), stage("ft b", "finetune", ["link"]),
              stage("ref", "reference", ["medtok"]), stage("eval", "eval", ["ft a", "ft b", "ref"])]
    assert [[s.name for s in b] for b in independent_batches(stages)] == [
        ["build"], ["medtok", "link"], ["ft a", "ft b", "ref"], ["eval"]]


def test_eta_shares_a_batch_between_the_workers(tmp_path: Path):
    stages = [stage("ft a", "finetune"), stage("ft b", "finetune"), stage("ft c", "finetune"),
              stage("eval", "eval", ["ft a", "ft b", "ft c"])]
    for s, seconds in zip(stages, (300.0, 300.0, 300.0, 60.0), strict=True):
        write_json(_stamp_path(tmp_path, s), {"seconds": seconds, "finished": "yes"})
    assert Progress(tmp_path, stages).line(1, stages).endswith("ETA 0:16:00")
    assert Progress(tmp_path, stages, workers=2).line(1, stages).endswith("ETA 0:08:30")  # 900 s / 2 + 60 s


def test_experiment_time_counts_stages_run_side_by_side_once(tmp_path: Path):
    stages = [stage("link", "link"), stage("ft a", "finetune"), stage("ft b", "finetune"), stage("eval", "eval")]
    stamps = [("2026-01-01 10:00:00", 60.0, 50.0),   # link 09:59-10:00
              ("2026-01-01 10:10:00", 600.0, 590.0),  # ft a 10:00-10:10, beside
              ("2026-01-01 10:08:00", 420.0, 400.0),  # ft b 10:01-10:08
              ("2026-01-02 09:01:00", 60.0, 55.0)]    # eval the next day, after a resume
    for s, (finished, seconds, cpu) in zip(stages, stamps, strict=True):
        write_json(_stamp_path(tmp_path, s), {"finished": finished, "seconds": seconds, "cpu_seconds": cpu})
    totals = stamped_totals(tmp_path, stages)
    assert totals["wall_seconds"] == 60 + 600 + 60 and totals["cpu_seconds"] == 50 + 590 + 400 + 55
    assert totals["cpu_seconds_by_group"] == {"link": 50.0, "finetune": 990.0, "eval": 55.0}
    write_json(_stamp_path(tmp_path, stages[3]), {"finished": None, "seconds": None})  # killed: not counted
    assert stamped_totals(tmp_path, stages)["stages"] == 3
