"""`--resume` as typed on the command line: fire passes `false`/`true` as strings, `False`/`True` as booleans; each
must mean what it says, so a new run never silently resumes from an old checkpoint."""

import pytest
from monai.bundle import ConfigParser

BUNDLES = ("msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion")


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize(
    ("typed", "resumes"), [("false", False), (False, False), ("0", False), ("true", True), (True, True)]
)
def test_resume_flag(repo_root, bundle, typed, resumes):
    parser = ConfigParser()
    parser.read_config(str(repo_root / "bundles" / bundle / "configs" / "train.json"))
    parser["resume"] = typed
    parser["train#resume_path"] = "/some/resume_checkpoint_epoch=3.pt"  # as if an earlier run had left one
    loader = parser.get("train#resume_handlers")[0]
    assert loader["_target_"].endswith("CheckpointLoader")
    parser.parse()
    disabled = parser.get_parsed_content("train#resume_handlers#0#_disabled_", instantiate=False)
    assert bool(disabled) is not resumes
