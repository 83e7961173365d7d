"""benchmarks/ablation.py: every ablation and probe record names the commit its code came from."""

import subprocess

from benchmarks import ablation


def _git(repo, *args):
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_source_commit_names_the_checkout_and_marks_local_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "REPO", tmp_path)
    assert ablation.source_commit() is None  # not a git checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert ablation.source_commit() == head and len(head) == 40
    (tmp_path / "code.py").write_text("x = 2\n")
    assert ablation.source_commit() == head + "+changes"
    assert ablation.machine_settings(1)["commit"] == head + "+changes"
