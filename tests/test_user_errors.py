"""A user's mistake in a bundle run ends with one line naming it (exit 1, no traceback); a bug keeps its traceback.

Through the real command line (``python -m monai.bundle run ...``), where ``shared.engines.user_errors`` is installed
by each config's ``imports``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from shared.engines.user_errors import find_input_error
from shared.errors import InputError
from shared.phantoms import kits19, lits
from tests.conftest import REPO_ROOT

PROG = "python -m monai.bundle run: "
HOOK = "$import shared.engines.user_errors"
BUNDLES = REPO_ROOT / "bundles"
DATASETS = {"msan_kits": "kits19", "va_maskrcnn_lits": "lits", "cs_att_deeplesion": "deeplesion"}


def _run(config_files: str, *args, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *launcher, "-m", "monai.bundle", "run", "training", "--config_file", config_files]
    cmd += [str(a) for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def _train(bundle: str, *args) -> subprocess.CompletedProcess:
    return _run(f"bundles/{bundle}/configs/train.json", *args)


def _user_error(result: subprocess.CompletedProcess) -> str:
    """The last non-empty stderr line of a run stopped by the user's input; fails on a traceback or another code."""
    assert "Traceback" not in result.stderr, result.stderr[-5000:]
    assert result.returncode == 1, result.stderr[-5000:]
    line = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert line.startswith(PROG), result.stderr[-5000:]
    return line


@pytest.mark.parametrize("bundle", sorted(DATASETS))
def test_training_without_dataset_dir_ends_with_the_one_line_message(bundle, tmp_path):
    default_root = ConfigParser.load_config_file(BUNDLES / bundle / "configs" / "train.json")["dataset_dir"]
    if Path(default_root).exists():
        pytest.skip(f"the default dataset_dir {default_root} exists on this machine")
    # else the COCO (va_maskrcnn_lits) or ImageNet VGG-16 (cs_att_deeplesion) file is missing
    no_weights = ["--pretrained", "false"] if bundle != "msan_kits" else []
    line = _user_error(_train(bundle, "--ckpt_dir", tmp_path / "models", *no_weights))
    assert f"{default_root}: dataset root not found" in line and "--dataset_dir" in line
    assert f"python -m shared phantoms {DATASETS[bundle]}" in line
    assert not (tmp_path / "models").exists()


@pytest.fixture(scope="module")
def phantom_roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return {
        "msan_kits": kits19.make_phantoms(root / "kits19", num_cases=3, shape=(16, 32, 32)),
        "va_maskrcnn_lits": lits.make_phantoms(root / "lits", num_cases=3, shape=(12, 32, 32)),
    }


@pytest.mark.parametrize(
    "bundle, knob, tiny",
    [
        ("msan_kits", "deep_supervision", ["--num_workers", 0]),
        ("va_maskrcnn_lits", "attention", ["--num_workers", 0, "--pretrained", "false", "--image_size", 32]),
    ],
)
def test_a_bad_boolean_knob_ends_with_a_line_naming_it(bundle, knob, tiny, phantom_roots, tmp_path):
    args = ["--dataset_dir", phantom_roots[bundle], "--ckpt_dir", tmp_path / "models", *tiny, f"--{knob}", "maybe"]
    line = _user_error(_train(bundle, *args))
    assert line == f"{PROG}{knob}: expected true or false (or 1 / 0), got 'maybe'; pass --{knob} true or --{knob} false"
    assert not (tmp_path / "models").exists()


def test_a_bug_keeps_its_traceback(tmp_path):
    """A component that raises a plain TypeError (as_bool without its knob name) is a bug, not the user's input."""
    args_file = tmp_path / "bug.json"
    args_file.write_text(json.dumps({"initialize": [{"_target_": "shared.engines.flags.as_bool", "value": "true"}]}))
    result = _train("msan_kits", "--args_file", args_file, "--ckpt_dir", tmp_path / "models")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "TypeError: as_bool() missing 1 required positional argument: 'name'" in result.stderr
    assert PROG not in result.stderr


@pytest.mark.slow
def test_torchrun_stops_every_rank_with_the_line_and_a_failing_exit_code(tmp_path):
    files = "['bundles/msan_kits/configs/train.json','bundles/msan_kits/configs/multi_gpu_train.json']"
    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2")
    result = _run(files, "--dataset_dir", tmp_path / "missing", "--ckpt_dir", tmp_path / "models", launcher=launcher)
    assert result.returncode != 0
    for rank in (0, 1):
        assert f"[rank{rank}]: {PROG}{tmp_path / 'missing'}: dataset root not found" in result.stderr
    assert "DatasetError" not in result.stderr  # the ranks printed no traceback of it


def test_every_bundle_config_that_sets_imports_installs_the_hook():
    """Overlays without "imports" inherit those of train.json / inference.json, which must have them."""
    for bundle in DATASETS:
        configs = BUNDLES / bundle / "configs"
        assert all("imports" in json.loads((configs / name).read_text()) for name in ("train.json", "inference.json"))
        for path in configs.glob("*.json"):
            imports = json.loads(path.read_text()).get("imports", [HOOK])
            assert imports[0] == HOOK, f"{path}: imports must start with {HOOK!r}"


def _raised(error: Exception, during: Exception, from_none: bool = False) -> Exception:
    """``error`` as raised while handling ``during`` (implicitly chained, or ``from None``)."""
    try:
        try:
            raise during
        except Exception:
            if from_none:
                raise error from None
            raise error  # noqa: B904 - the implicit __context__ chain is what is tested
    except Exception as raised:
        return raised


def test_find_input_error_follows_the_chain_python_prints():
    user = InputError("dataset_dir: not found")
    wrapped = RuntimeError("Failed to instantiate component")
    wrapped.__cause__ = RuntimeError("Failed to evaluate")
    wrapped.__cause__.__cause__ = user
    assert find_input_error(wrapped) is user
    assert find_input_error(_raised(TypeError("bug"), InputError("x"))).args == ("x",)  # through __context__
    assert find_input_error(_raised(TypeError("bug"), InputError("x"), from_none=True)) is None  # context hidden
    assert find_input_error(_raised(TypeError("bug"), ValueError("not an InputError"))) is None
