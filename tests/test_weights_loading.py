"""Weights are loaded without unpickling arbitrary objects, everywhere this project loads them (issue: sharing)."""

import re

import pytest
import torch

from shared.networks.pretrained import read_state_dict

LOAD_CALL = re.compile(r"torch\.load\(([^()]*(?:\([^()]*\)[^()]*)*)\)")


def test_every_torch_load_in_code_and_configs_is_weights_only(repo_root):
    sources = [*repo_root.glob("shared/**/*.py"), *repo_root.glob("bundles/*/configs/*.json")]
    calls = [(path, m.group(1)) for path in sources for m in LOAD_CALL.finditer(path.read_text())]
    assert calls, "expected torch.load calls to check"
    unsafe = [str(path) for path, args in calls if "weights_only=True" not in args]
    assert not unsafe, f"torch.load without weights_only=True in {unsafe}"


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        read_state_dict(path)
