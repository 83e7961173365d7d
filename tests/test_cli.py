"""`python -m shared` on bad input: one line on stderr naming the problem, exit 1, no traceback."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.packaging import error_summary

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shared", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed command; fails the test on a traceback, several lines or another code."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def test_pack_without_weights_names_the_missing_file(tmp_path):
    bundle = tmp_path / "msan_kits"
    for item in ("configs", "docs"):
        shutil.copytree(REPO_ROOT / "bundles" / "msan_kits" / item, bundle / item)
    shutil.copy2(REPO_ROOT / "bundles" / "msan_kits" / "LICENSE", bundle / "LICENSE")
    line = _one_line_error(_cli("pack", str(bundle), "--out", str(tmp_path / "dist")))
    assert line.startswith("python -m shared pack: ")
    assert str(bundle / "models" / "model.pt") in line and "no trained weights" in line
    assert not (tmp_path / "dist").exists(), "a failed pack left files behind"


def test_pack_with_a_missing_ckpt_names_it(tmp_path):
    line = _one_line_error(_cli("pack", "msan_kits", "--out", str(tmp_path), "--ckpt", str(tmp_path / "none.pt")))
    assert str(tmp_path / "none.pt") in line


def test_pack_of_an_unknown_bundle_lists_the_bundles(tmp_path):
    line = _one_line_error(_cli("pack", "no_such_bundle", "--out", str(tmp_path)))
    assert "no such bundle" in line and "msan_kits" in line and "va_maskrcnn_lits" in line


@pytest.mark.parametrize("command", ["validate", "evaluate"])
def test_unknown_dataset_lists_the_datasets(command, tmp_path):
    args = [str(tmp_path)] if command == "validate" else [str(tmp_path), str(tmp_path)]
    line = _one_line_error(_cli(command, "no_such_dataset", *args))
    assert line.startswith(f"python -m shared {command}: ")
    assert "unknown dataset 'no_such_dataset'" in line and "kits19" in line


def test_show_of_a_missing_file_names_it(tmp_path):
    missing = tmp_path / "image.nii.gz"
    line = _one_line_error(_cli("show", "overlay", str(missing), str(missing), str(missing), str(tmp_path / "out.png")))
    assert str(missing) in line
    assert not (tmp_path / "out.png").exists()


def test_error_summary_of_a_real_torchscript_failure(tmp_path):
    """TorchScript puts an empty type line and the message below it: the summary is the message, not source code."""
    script = tmp_path / "fails.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch

            class Net(torch.nn.Module):
                def forward(self, x):
                    shape = [1] * x.dim()
                    return x.reshape(*shape)

            torch.jit.script(Net())
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    summary = error_summary(result.stderr)
    assert summary.startswith("RuntimeError: ") and len(summary) > len("RuntimeError: ") + 10, summary
    assert "\n" not in summary
    assert "reshape" not in summary, "the summary quotes the source instead of the reason"
    assert summary.endswith("(fails.py:7)"), summary


def test_error_summary_without_a_traceback_is_the_last_line():
    assert error_summary("loading...\nsomething went wrong\n\n") == "something went wrong"
    assert error_summary("") == ""
