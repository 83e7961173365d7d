"""The helpers bundle configs call: boolean knobs, resume-from-latest, and the multi-GPU device and handlers."""

import pytest
import torch
from ignite.contrib.handlers import ProgressBar
from monai.handlers import CheckpointSaver, LrScheduleHandler, StatsHandler, TensorBoardStatsHandler, ValidationHandler

from shared.engines import distributed
from shared.engines.checkpoint import resume_path
from shared.engines.flags import as_bool


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("True", True), ("false", False)]
    + [("False", False), ("1", True), ("0", False), (" TRUE ", True)],
)
def test_as_bool_reads_what_the_user_typed(value, expected):
    assert as_bool(value, "amp") is expected


@pytest.mark.parametrize("value", ["yes", "", "maybe", 2, -1, None, 0.0, [True]])
def test_as_bool_rejects_anything_else_naming_the_knob(value):
    with pytest.raises(ValueError, match=r"^deep_supervision: expected true or false"):
        as_bool(value, "deep_supervision")


def test_resume_path_is_the_newest_checkpoint_only_when_asked(tmp_path):
    for epoch in (2, 10, 9):
        (tmp_path / f"resume_checkpoint_epoch={epoch}.pt").touch()
    (tmp_path / "model.pt").touch()
    assert resume_path(tmp_path, "true") == str(tmp_path / "resume_checkpoint_epoch=10.pt")
    assert resume_path(tmp_path, True) == str(tmp_path / "resume_checkpoint_epoch=10.pt")
    assert resume_path(tmp_path, "false") is None
    assert resume_path(tmp_path, 0) is None
    assert resume_path(tmp_path / "empty", "true") is None
    with pytest.raises(ValueError, match="^resume: "):
        resume_path(tmp_path, "yes")


def test_local_device_follows_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.local_device() == torch.device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.local_device() == torch.device("cpu")


def _handlers(tmp_path) -> list:
    return [
        LrScheduleHandler(lr_scheduler=torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1)], 0.1), 1)),
        ValidationHandler(interval=1),
        StatsHandler(),
        TensorBoardStatsHandler(log_dir=str(tmp_path)),
        ProgressBar(),
        None,  # a disabled component
        CheckpointSaver(save_dir=str(tmp_path), save_dict={"x": torch.nn.Linear(1, 1)}),
    ]


@pytest.mark.parametrize("rank", [None, 0, 1, 3])
def test_handlers_for_rank_keeps_only_working_handlers_off_rank_zero(monkeypatch, tmp_path, rank):
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: rank is not None)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: rank)
    handlers = _handlers(tmp_path)
    kept = distributed.handlers_for_rank(handlers)
    if rank:
        assert [type(h) for h in kept] == [LrScheduleHandler, ValidationHandler]
    else:
        assert kept == [h for h in handlers if h is not None]
    assert distributed.handlers_for_rank(None) == []


def test_join_and_leave_a_gloo_group(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29581")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.join_process_group(torch.device("cpu"))
    try:
        assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
        distributed.join_process_group(torch.device("cpu"))  # a second call keeps the group
    finally:
        distributed.leave_process_group()
    assert not torch.distributed.is_initialized()
    distributed.leave_process_group()  # nothing to leave: no error
