"""`--resume` as typed on the command line: fire passes `false`/`true` as strings, `False`/`True` as booleans and
`0`/`1` as integers; each must mean what it says, so a new run never silently resumes from an old checkpoint, and a
value that means neither stops the run naming the knob."""

import pytest
from monai.bundle import ConfigParser

BUNDLES = ("msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion")


def _train_config(repo_root, bundle: str, ckpt_dir, typed) -> ConfigParser:
    """The bundle's train.json with `resume` as typed and a `ckpt_dir` where an earlier run left a resume file."""
    ckpt_dir.mkdir(exist_ok=True)
    (ckpt_dir / "resume_checkpoint_epoch=3.pt").touch()
    parser = ConfigParser()
    parser.read_config(str(repo_root / "bundles" / bundle / "configs" / "train.json"))
    parser["ckpt_dir"] = str(ckpt_dir)
    parser["resume"] = typed
    assert parser.get("train#resume_handlers")[0]["_target_"].endswith("CheckpointLoader")
    parser.parse()
    return parser


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize(
    ("typed", "resumes"),
    [("false", False), ("False", False), (False, False), ("0", False), (0, False)]
    + [("true", True), ("True", True), (True, True), ("1", True), (1, True)],
)
def test_resume_flag(repo_root, tmp_path, bundle, typed, resumes):
    parser = _train_config(repo_root, bundle, tmp_path / "models", typed)
    disabled = parser.get_parsed_content("train#resume_handlers#0#_disabled_")
    assert bool(disabled) is not resumes
    if resumes:
        assert parser.get_parsed_content("train#resume_path") == str(
            tmp_path / "models" / "resume_checkpoint_epoch=3.pt"
        )


@pytest.mark.parametrize("bundle", BUNDLES)
def test_resume_flag_of_neither_value_names_the_knob(repo_root, tmp_path, bundle):
    parser = _train_config(repo_root, bundle, tmp_path / "models", "maybe")
    with pytest.raises(RuntimeError) as err:
        parser.get_parsed_content("train#resume_handlers#0#_disabled_")
    cause = err.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ValueError) and str(cause).startswith("resume: expected true or false")
