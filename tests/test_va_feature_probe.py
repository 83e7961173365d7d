"""benchmarks/va_feature_probe.py: feature cells labelled from the phantom's objects, every lesion slice of a context
volume a target holding the volume's look-alike too, a phantom that is not the volume on disk refused, the stacked
arm (every member's features) telling lesions from look-alikes where the target member alone cannot, and the readout
reading what each ablation arm passes to its RPN and heads."""

import numpy as np
import pytest
import torch

from benchmarks import va_ablation
from benchmarks.va_context_probe import FORMS, draw_bags
from benchmarks.va_feature_probe import (
    LESION,
    LOOKALIKE,
    cell_labels,
    detector_parts,
    member_features,
    passed_features,
    run_arm,
    volume_targets,
)
from shared.data.lits import make_datalist

SHAPE = [128, 128, 24]  # the demo's 128 px slices (the bundle's image_size), few of them
OPTIONS = {"context_bag": 9, "max_lookalikes": 1, "fov": "body"}


def test_cells_take_the_class_of_the_object_covering_half_of_them_and_every_object_has_one():
    lesion = np.zeros((16, 16), bool)
    lesion[0:4, 0:6] = True  # covers cell (0, 0) fully and half of cell (0, 1)
    lookalike = np.zeros((16, 16), bool)
    lookalike[9, 9] = True  # a sixteenth of cell (2, 2): kept as the object's most covered cell
    labels, ids = cell_labels([lesion, lookalike], [LESION, LOOKALIKE], (4, 4))
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[0, 0] = expected[0, 1] = LESION
    expected[2, 2] = LOOKALIKE
    assert torch.equal(labels, expected)
    assert torch.equal(ids, (expected == LESION).long() + 2 * (expected == LOOKALIKE).long())


@pytest.fixture(scope="module")
def context_volumes(tmp_path_factory):
    out = tmp_path_factory.mktemp("feature_probe")
    data = va_ablation.make_data(out, 4, SHAPE, OPTIONS)
    torch.manual_seed(0)
    network, preprocessing, bag_size = detector_parts(out, data, 1, 4)
    split = make_datalist(data, seed=va_ablation.SPLIT_SEED)
    return network.backbone.eval(), preprocessing, bag_size, split["training"] + split["validation"], out, data


def test_every_lesion_slice_is_a_target_with_the_volumes_objects(context_volumes):
    backbone, preprocessing, bag_size, entries, _, _ = context_volumes
    assert bag_size == 9
    for entry in entries:
        targets = volume_targets(member_features(backbone, "0"), preprocessing, bag_size, entry, SHAPE, OPTIONS)
        assert targets, entry["case"]
        for target in targets:
            assert target["features"].shape == (9, 64, 32, 32)  # N members, FPN width 64, stride 4
            assert LESION in target["classes"]
            for i, kind in enumerate(target["classes"], start=1):
                cells = target["ids"] == i
                assert cells.any() and (target["labels"][cells] == kind).all()
        assert any(LOOKALIKE in t["classes"] for t in targets), entry["case"]  # on the lesions' level


def test_a_phantom_that_is_not_the_volume_on_disk_is_refused(context_volumes):
    backbone, preprocessing, bag_size, entries, _, _ = context_volumes
    other = {**entries[0], "case": entries[1]["case"]}  # entry 0's files, entry 1's phantom
    with pytest.raises(SystemExit, match="not the volume on disk"):
        volume_targets(member_features(backbone, "0"), preprocessing, bag_size, other, SHAPE, OPTIONS)


def test_the_stacked_members_tell_lesions_from_look_alikes_where_the_target_cannot():
    signature = torch.rand(16, generator=torch.Generator().manual_seed(0))
    bags, labels, _, _ = draw_bags(torch.Generator().manual_seed(1), 64, signature, n=9, size=24)
    held_bags, _, ids, classes = draw_bags(torch.Generator().manual_seed(2), 48, signature, n=9, size=24)
    train, held_out = (bags, labels), (held_bags, None, ids, classes)
    target = run_arm("target", 0, 200, FORMS["fixed_parallel"], train, held_out)
    stacked = run_arm("stacked", 0, 200, FORMS["fixed_parallel"], train, held_out)
    assert target["images_per_target"] == 1 and stacked["images_per_target"] == 9
    assert target["balanced_accuracy"] <= 0.65  # one distribution on the target member
    assert stacked["balanced_accuracy"] >= 0.9


def test_the_readout_reads_what_each_arm_passes_on(context_volumes):
    """The baseline passes the target image's own features on; a VA arm (built as the ablation builds it, checked to
    be the arm) its block's output, which mixes in the bag."""
    backbone, _, bag_size, _, out, data = context_volumes
    bag = torch.rand(3 * bag_size, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        members = member_features(backbone, "0")(bag)
        passed = passed_features(backbone, "0")(bag)
    assert members.shape == (9, 64, 32, 32) and passed.shape == (1, 64, 32, 32)
    torch.testing.assert_close(passed[0], members[bag_size // 2], atol=1e-4, rtol=1e-4)  # a batch of 1, not 9
    assert not torch.allclose(members[0], members[bag_size // 2])
    form = va_ablation.FORMS["fixed_parallel_residual"]
    network, _, _ = detector_parts(out, data, 1, 4, "full", 0, form)
    blocks = [m for m in network.modules() if hasattr(m, "bag_residual")]
    assert len(blocks) == 5 and all(m.bag_residual and not m.sequential for m in blocks)
    va = network.backbone.eval()
    va.load_state_dict(backbone.state_dict(), strict=False)  # the same ResNet-FPN: only the VA blocks differ
    with torch.no_grad():
        attended = passed_features(va, "0")(bag)
        torch.testing.assert_close(member_features(va, "0")(bag), members, atol=1e-4, rtol=1e-4)
    assert attended.shape == (1, 64, 32, 32) and not torch.allclose(attended[0], members[bag_size // 2])
