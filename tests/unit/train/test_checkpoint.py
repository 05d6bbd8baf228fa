import json

from raytrain.train.checkpoint import STATE_FILE, TrainerState, checkpoint_problem, latest_checkpoint, resume_point


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


def _complete(storage, step: int, *, payload: bytes = b"x" * 64):
    """A checkpoint folder as `save_checkpoint` leaves it: files of two ranks, then the state listing them."""
    folder = storage / f"checkpoint_{step:06d}"
    files = {"deepspeed/mp_rank_00_model_states.pt": payload, "deepspeed/zero_pp_rank_1_optim_states.pt": payload * 2,
             "model/model.safetensors": payload}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    TrainerState(step=step, version=step, consumed=[f"k{i}" for i in range(step)],
                 files={rel: len(data) for rel, data in files.items()}).save(folder)
    return folder


def test_a_truncated_or_half_copied_latest_checkpoint_is_reported_and_the_one_before_used(tmp_path, capsys):
    """Issue 17 item 4: a checkpoint whose files are not all there at their written size is never resumed from."""
    good, truncated, cut = (_complete(tmp_path, s) for s in (2, 4, 6))
    shard = truncated / "deepspeed/zero_pp_rank_1_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:10])  # truncated on disk after it was written
    (cut / "model/model.safetensors").unlink()  # a copy into storage cut off before this file
    assert latest_checkpoint(tmp_path) == good
    out = capsys.readouterr().out
    assert f"{truncated}: deepspeed/zero_pp_rank_1_optim_states.pt has 10 bytes, 128 were written" in out
    assert f"{cut}: model/model.safetensors is missing" in out
    assert checkpoint_problem(good) is None and checkpoint_problem(tmp_path / "absent") == f"no {STATE_FILE}"


def test_every_rank_resumes_from_the_newest_complete_checkpoint_on_storage(tmp_path, gloo_rank):
    # Not Ray Train's newest registered one, which can be older (its controller registers at its next poll).
    older, newer, broken = (_complete(tmp_path, s) for s in (2, 4, 6))
    (broken / "model/model.safetensors").write_bytes(b"")  # the newest, truncated since
    assert resume_point(tmp_path, rank=0) == newer
    assert resume_point(tmp_path / "none yet", rank=0) is None
