"""msan_kits defaults are paper 003's settings (sec. 3.1 and the Table 1 caption); demo sizes live in the job script."""

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "msan_kits" / "configs"


def _parser(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in names])
    parser.update(overrides)
    return parser


def test_input_every_4_images_of_512x512_batch_2_no_resampling():
    """ "Every 4 images of size 512x512 is input into the trained model with the batchsize set to 2"."""
    for name in ("train.json", "inference.json"):
        config = json.loads((CONFIGS / name).read_text())
        assert config["patch_size"] == [512, 512, 4] and config["spacing"] is None, name
        assert config["hu_window"] == [-200, 500], name  # sec. 2.1: clipped to [-200, 500]
    train = json.loads((CONFIGS / "train.json").read_text())
    assert (train["batch_size"], train["num_samples"]) == (2, 1)  # two slabs per iteration


def test_schedule_adam_1e_3_400k_iterations_lr_over_10_every_100k_counted_in_iterations():
    parser = _parser("train.json", **{"train#dataloader": "$list(range(90))"})  # 180 cases, batch 2
    assert parser["iterations"] == 400_000 and parser["lr_step_iterations"] == 100_000
    assert parser["optimizer"]["_target_"] == "torch.optim.Adam" and parser["learning_rate"] == 0.001
    scheduler = parser["lr_scheduler"]
    assert scheduler["_target_"].endswith("StepLR") and scheduler["step_size"] == "@lr_step_iterations"
    assert scheduler["gamma"] == 0.1
    (handler,) = [h for h in parser["train"]["handlers"] if h["_target_"] == "LrScheduleHandler"]
    assert handler["epoch_level"] is False  # the scheduler steps every iteration
    # whole epochs of one pass over the data, enough for the iterations; validation every ~5000 iterations
    assert parser.get_parsed_content("epochs") == 4445 and parser.get_parsed_content("val_interval") == 55
    assert parser["train"]["trainer"]["max_epochs"] == "@epochs"


@pytest.mark.parametrize("loader_length, epochs", [(1, 400_000), (7, 57_143), (400_000, 1)])
def test_iterations_do_not_depend_on_the_dataset_size(loader_length, epochs):
    parser = _parser("train.json", **{"train#dataloader": f"$list(range({loader_length}))"})
    assert parser.get_parsed_content("epochs") == epochs
    assert 0 <= epochs * loader_length - 400_000 < loader_length  # rounded up to a whole epoch, no further


def test_dice_loss_with_deep_supervision_and_default_network():
    """Sec. 3.1: "A dice loss"; over all three classes, background included: without it a start that calls nothing
    background stays stuck over the far field (docs/experiments/msan_kits.md, "Why seed 1 fails")."""
    parser = _parser("train.json")
    assert parser["loss"]["_target_"] == "DeepSupervisionLoss" and parser["loss"]["loss"]["_target_"] == "DiceLoss"
    assert parser["loss"]["loss"]["include_background"] is True
    network = parser.get_parsed_content("network_def")
    assert network.variant == "v1" and network.deep_supervision is False


def test_largest_components_before_and_after_the_vote():
    """Table 1 caption: "a simple maximal connected component is applied to all model": each member's output
    before the vote, and the vote."""
    transforms = _parser("inference.json", "inference_ensemble.json")["postprocessing"]["transforms"]
    targets = [t["_target_"] for t in transforms]
    vote = targets.index("VoteEnsembled")
    members = transforms[0]["transforms"]
    assert [t["_target_"] for t in members] == ["AsDiscreted", "KeepLargestConnectedComponentd"] and vote == 1
    assert members[1]["keys"] == "@pred_keys"
    assert "KeepLargestConnectedComponentd" in targets[vote + 1 :]
    for item in (members[1], transforms[targets.index("KeepLargestConnectedComponentd")]):
        assert item["applied_labels"] == [1, 2] and item["independent"] is False
        assert item["num_components"] == "@num_components"
    assert _parser("inference.json")["num_components"] == 2  # two kidneys, each with its tumours
