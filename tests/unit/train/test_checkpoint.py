import json

from raytrain.train.checkpoint import STATE_FILE, TrainerState, latest_checkpoint


def test_latest_checkpoint_passes_over_a_half_written_state(tmp_path, capsys):
    for step in (2, 4):
        folder = tmp_path / f"checkpoint_{step:06d}"
        folder.mkdir()
        TrainerState(step=step, version=step, consumed=[f"k{i}" for i in range(step)]).save(folder)
    cut = tmp_path / "checkpoint_000006"
    cut.mkdir()
    (cut / STATE_FILE).write_text(json.dumps({"step": 6, "version": 6, "consumed": ["k0"]})[:20])

    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_000004"
    assert "checkpoint_000006" in capsys.readouterr().out


def test_latest_checkpoint_of_an_empty_storage_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
