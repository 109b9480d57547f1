"""scripts/world_clip_pipeline.py: stages run in order on one device, a finished stage is never run again, and a
failed stage stops the pipeline with its exit status. The stages' commands are replaced by a stand-in that writes
each stage's output, so nothing is trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import loaded_script

from clipviz.world.groundtruth import bundled_selectivity


@pytest.fixture()
def pipeline():
    with loaded_script("world_clip_pipeline") as module:
        yield module


ALL_SCRIPTS = [
    "train_world_clip",
    "validate_world_clip",
    "plant_world_clip",
    "train_world_clip",
    "validate_world_clip",
    "method_figures",
]


def _run(pipeline, out: Path, monkeypatch, fail: str | None = None, device: str = "cuda:3") -> tuple[list[str], int]:
    """Run the pipeline with a stand-in for each stage's command: it writes the stage's output (or fails, for the
    stage ``fail``); returns the scripts that ran and the exit status."""
    argv = ["--out", str(out), "--device", device, "--plant-blocks", "2,3,5"]
    done = {tuple(cmd): path for _, cmd, path in pipeline.stages(pipeline.parser().parse_args(argv))}
    ran: list[str] = []

    def call(command, stdout, stderr):
        ran.append(Path(command[1]).stem)
        assert command[command.index("--device") + 1] == device
        if ran[-1] == fail:
            stdout.write("Traceback ...\nRuntimeError: out of memory\n")
            return 3
        done[tuple(command)].parent.mkdir(parents=True, exist_ok=True)
        done[tuple(command)].write_text("{}")
        return 0

    monkeypatch.setattr(pipeline.subprocess, "call", call)
    try:
        pipeline.main(argv)
    except SystemExit as stop:
        return ran, int(stop.code)
    return ran, 0


def test_stages_run_in_order_and_a_second_run_redoes_nothing(pipeline, monkeypatch, tmp_path):
    ran, status = _run(pipeline, tmp_path / "run", monkeypatch)
    assert status == 0
    assert ran == ALL_SCRIPTS
    record = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert list(record["stages"]) == ["base", "base-truth", "plan", "planted", "planted-truth", "figures"]
    assert "--blocks 2,3,5 --closed" in record["stages"]["plan"]["command"]
    assert "--init-from" in record["stages"]["planted"]["command"]
    again, status = _run(pipeline, tmp_path / "run", monkeypatch)
    assert (again, status) == ([], 0)


def test_a_failed_stage_stops_the_pipeline_and_the_next_run_resumes_there(pipeline, monkeypatch, tmp_path, capsys):
    ran, status = _run(pipeline, tmp_path / "run", monkeypatch, fail="plant_world_clip")
    assert (ran, status) == (["train_world_clip", "validate_world_clip", "plant_world_clip"], 3)
    err = capsys.readouterr()
    assert "out of memory" in err.err and "stage 'plan' failed (exit status 3)" in err.out
    assert not (tmp_path / "run" / "planted").exists()
    record = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert record["stages"]["plan"]["status"] == 3
    resumed, status = _run(pipeline, tmp_path / "run", monkeypatch)
    assert status == 0
    assert resumed == ["plant_world_clip", "train_world_clip", "validate_world_clip", "method_figures"]


def test_a_candidate_directory_without_a_ground_truth_is_refused_by_name(tmp_path):
    from clipviz.errors import ClipvizError

    with pytest.raises(ClipvizError, match="neither a bundled model .* nor a directory with a ground truth"):
        bundled_selectivity(str(tmp_path))


def test_a_run_with_other_settings_is_refused_not_resumed(pipeline, monkeypatch, tmp_path):
    """A finished stage is kept on a rerun, so other settings would be recorded beside results not made with
    them; only the pace (device, workers, threads) may change."""
    assert _run(pipeline, tmp_path / "run", monkeypatch) == (ALL_SCRIPTS, 0)
    with pytest.raises(SystemExit, match=r"--base-steps 8000 \(now 30\)"):
        pipeline.main(
            ["--out", str(tmp_path / "run"), "--device", "cuda:3", "--plant-blocks", "2,3,5", "--base-steps", "30"]
        )
    ran, status = _run(pipeline, tmp_path / "run", monkeypatch, device="cpu")  # another device only: nothing to do
    assert (ran, status) == ([], 0)


def test_unreadable_stage_settings_are_refused_in_one_line_before_any_stage(pipeline, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        pipeline.main(["--out", str(out), "--plan-args", '--closed "--blocks'])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--plan-args '--closed \"--blocks': No closing quotation" in err
    assert not out.exists()
