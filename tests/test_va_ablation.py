"""benchmarks/va_ablation.py: every arm reaches the bundle as the model it claims (the baseline by ``attention false``
alone), a mislabelled arm is refused, the held-out scoring (lesion Dice per case, lesion false positives, look-alikes
hit) gives the values worked out by hand, and a tiny run writes the table with every arm and the blocks'
measurements."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from benchmarks import va_ablation as ablation
from shared.networks.va_rcnn import build_va_mask_rcnn

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("form", ["fixed", "fixed_parallel", "fixed_parallel_residual"])
@pytest.mark.parametrize("arm", list(ablation.ARMS))
def test_each_arm_builds_the_model_it_claims(arm, form, tmp_path):
    """The knobs go in as the lower-case strings the command line gives ('false' must not switch VA on)."""
    extra = {**ablation.FORMS[form]}
    overrides = ablation.arm_overrides(arm, seed=0, data=tmp_path, arm_dir=tmp_path, epochs=2, extra=extra)
    knobs = ("attention", "channel_attention", "spatial_attention")
    assert all(overrides[k] in ("true", "false") for k in knobs if k in overrides)
    parser = ConfigParser()
    parser.read_config(str(ablation.CONFIGS / "train.json"))
    parser.update(overrides)
    network = parser.get_parsed_content("network_def")
    found = ablation.check_arm(arm, overrides, network, "built")
    assert found["blocks"] == list(ablation.ARMS[arm][1])
    # 64 channels: 16 hidden units with the fixed form's floor, 64 // 16 = 4 as written; the order only with both gates
    fixed = {"spatial_scale": True, "gate_norm": True, "spatial_relu": False, "channel_hidden": 16}
    fixed.update(sequential=form == "fixed", bag_residual=form == "fixed_parallel_residual")
    paper = {"spatial_scale": False, "gate_norm": False, "spatial_relu": True, "channel_hidden": 4, "sequential": True}
    paper["bag_residual"] = False
    blocks = ablation.ARMS[arm][1]
    expected = paper if arm == "full_paper" else {} if not blocks else fixed  # the run's form
    if blocks == ("channel",):
        expected = {k: v for k, v in expected.items() if k not in ("spatial_relu", "sequential")}
    if blocks == ("spatial",):
        expected = {k: v for k, v in expected.items() if k not in ("channel_hidden", "sequential")}
    assert found["form"] == expected
    orders = {m.sequential for m in network.modules() if hasattr(m, "sequential")}  # one-gate arms: the knob unused
    assert orders == ({form == "fixed" or arm == "full_paper"} if blocks else set())
    assert found["images_per_target"] == (1 if arm == "baseline" else 9) and found["bag_size"] == 9
    assert found["parameters"] == sum(p.numel() for p in network.parameters())


def test_a_mislabelled_arm_is_refused():
    def network(**switches):
        return build_va_mask_rcnn(bag_size=3, backbone="resnet18", min_size=32, max_size=32, **switches)

    def knobs(arm, form=ablation.PAPER_FORM):
        return {**form, "fpn_channels": 256, **ablation.ARMS[arm][2]}

    full, channel, baseline = network(), network(spatial=False), network(attention=False)
    gateless = network(channel=False, spatial=False)  # the whole bag read, no VA block
    fixed = network(spatial_scale=True, gate_norm=True, min_hidden=32, spatial_relu=False)
    assert ablation.check_arm("full", knobs("full"), full, "built")["images_per_target"] == 3
    with pytest.raises(SystemExit, match=r"arm baseline \(2.5D Mask R-CNN \(no VA\)\): the trainer's network holds"):
        ablation.check_arm("baseline", knobs("baseline"), full, "trainer's")
    with pytest.raises(SystemExit, match=r"VA blocks \['channel'\], not \['spatial'\]"):
        ablation.check_arm("spatial", knobs("spatial"), channel, "evaluated")
    with pytest.raises(SystemExit, match="reads 3 backbone images per target, not 1"):
        ablation.check_arm("baseline", knobs("baseline"), gateless, "evaluated")
    assert ablation.check_arm("baseline", knobs("baseline"), baseline, "built")["images_per_target"] == 1
    # the block form: 256 // 16 = 16 hidden units as written, the fixed form's floor 16 (the network has 32)
    with pytest.raises(SystemExit, match="'gate_norm': True.*not .*'gate_norm': False"):
        ablation.check_arm("full", knobs("full"), fixed, "built")
    with pytest.raises(SystemExit, match="'channel_hidden': 32, 'sequential': True}, not .*'channel_hidden': 16, "):
        ablation.check_arm("full", knobs("full", ablation.FIXED_FORM), fixed, "built")
    with pytest.raises(SystemExit, match="'gate_norm': True.*not .*'gate_norm': False"):
        ablation.check_arm("full_paper", knobs("full_paper", ablation.FIXED_FORM), fixed, "built")
    # the order of the gates: a sequential network is not the fixed_parallel form it would claim
    fixed_knobs = {**ablation.FIXED_PARALLEL_FORM, "min_hidden": 32}
    with pytest.raises(SystemExit, match="'sequential': True}, not .*'sequential': False}"):
        ablation.check_arm("full", knobs("full", fixed_knobs), fixed, "built")
    parallel = network(spatial_scale=True, gate_norm=True, min_hidden=32, spatial_relu=False, sequential=False)
    assert ablation.check_arm("full", knobs("full", fixed_knobs), parallel, "built")["form"]["sequential"] is False
    # the bag residual: a network without it is not the residual form it would claim, nor one with it the plain form
    residual_knobs = {**ablation.FIXED_PARALLEL_RESIDUAL_FORM, "min_hidden": 32}
    with pytest.raises(SystemExit, match="'bag_residual': False.*not .*'bag_residual': True"):
        ablation.check_arm("full", knobs("full", residual_knobs), parallel, "built")
    residual = network(
        spatial_scale=True, gate_norm=True, min_hidden=32, spatial_relu=False, sequential=False, bag_residual=True
    )
    with pytest.raises(SystemExit, match="'bag_residual': True.*not .*'bag_residual': False"):
        ablation.check_arm("full", knobs("full", fixed_knobs), residual, "built")
    assert ablation.check_arm("full", knobs("full", residual_knobs), residual, "built")["form"]["bag_residual"] is True
    # channel block per FPN level (256 channels, reduction 16): 256*16+16 + 16*256+256 + 256*256+256; 5 levels
    parameters = {name: ablation.va_blocks(n)["parameters"] for name, n in [("channel", channel), ("base", baseline)]}
    assert parameters["channel"] - parameters["base"] == 5 * (4112 + 4352 + 65792)


def _write(path: Path, labels: np.ndarray) -> None:
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])  # LAS on disk, as LiTS: the scorer reads it flipped to RAS
    nib.Nifti1Image(labels.astype(np.uint8), affine).to_filename(path)


def test_score_by_hand(tmp_path):
    """Volume 0: lesions of 8 and 4 voxels, predicted: 4 voxels of the first, and 2 single voxels touching no lesion,
    one of them a look-alike centre; volume 1: no lesion, none predicted. Indices are those of the written files."""
    ref0 = np.ones((8, 8, 4))
    ref0[1:3, 1:3, 1:3] = 2
    ref0[5:7, 5:7, 0] = 2
    pred0 = np.ones((8, 8, 4))
    pred0[1:3, 1:3, 1] = 2  # inside lesion 1
    pred0[5, 1, 2] = 2  # a false positive
    pred0[1, 6, 0] = 2  # a false positive on a look-alike (its mirror in x, [6, 6, 0], is a reference lesion)
    data, preds = tmp_path / "data", tmp_path / "eval" / "predictions"
    data.mkdir()
    preds.mkdir(parents=True)
    _write(data / "segmentation-0.nii", ref0)
    _write(preds / "volume-0_seg.nii.gz", pred0)
    _write(data / "segmentation-1.nii", np.ones((8, 8, 4)))
    _write(preds / "volume-1_seg.nii.gz", np.ones((8, 8, 4)))
    entries = [{"image": str(data / f"volume-{n}.nii"), "label": str(data / f"segmentation-{n}.nii")} for n in (0, 1)]
    entries = [{**e, "case": f"volume-{n}"} for n, e in enumerate(entries)]
    lookalikes = {"volume-0.nii": [[1, 6, 0], [4, 4, 3]], "volume-1.nii": [[2, 2, 2]]}

    scored = ablation.score(preds, entries, lookalikes)
    assert [c["lesion_dice"] for c in scored["cases"]] == pytest.approx([2 * 4 / (6 + 12), 1.0])
    assert [c["lesion_false_positives"] for c in scored["cases"]] == [2, 0]
    assert [(c["lookalikes"], c["lookalikes_hit"]) for c in scored["cases"]] == [(2, 1), (1, 0)]
    assert scored["lesion_dice_per_case"] == pytest.approx((4 / 9 + 1) / 2)
    assert scored["lesion_fp_per_volume"] == 1.0 and scored["lookalikes_hit"] == pytest.approx(1 / 3)
    assert (scored["volumes"], scored["lesions"], scored["lookalikes"]) == (2, 2, 3)


def test_summary_gives_mean_and_sd_over_seeds():
    def record(arm, seed, dice, fps, hit):
        blocks = list(ablation.ARMS[arm][1])
        return {
            "arm": arm,
            "seed": seed,
            "parameters": 100 if arm == "baseline" else 130,
            "blocks": blocks,
            "images_per_target": 9 if blocks else 1,
            "volumes": 6,
            "lesions": 20,
            "lookalikes": 12,
            "lesion_dice_per_case": dice,
            "lesion_fp_per_volume": fps,
            "lookalikes_hit": hit,
            "train_s": 10.0 + seed,
            "train_cpu_s": 18.0 + seed,
            "peak_rss_mib": 500.0 + seed,
        }

    records = [record("baseline", 0, 0.4, 2.0, 0.5), record("baseline", 1, 0.6, 4.0, 0.3), record("full", 0, 0.7, 1, 0)]
    overrides = {"samples_per_epoch": 64, "bag_size": 9}
    settings = {"epochs": 8, "pretrain_epochs": 5, "seeds": [0, 1], "parallel": 2, "threads": 1, "overrides": overrides}
    rows, markdown = ablation.summarize(records, settings)
    assert [r["arm"] for r in rows] == ["baseline", "full"]
    assert rows[0]["lesion_dice_per_case_mean"] == pytest.approx(0.5)
    assert rows[0]["lesion_fp_per_volume_sd"] == pytest.approx(1.4142, abs=1e-4) and rows[1]["seeds"] == 1
    assert "| 2.5D Mask R-CNN (no VA) | 100 | none | 1 | 2 | 0.500 +- 0.141 | 3.000 +- 1.414 |" in markdown
    assert "| VA Mask R-CNN (channel + spatial) | 130 | channel, spatial | 9 | 1 | 0.700 +- 0.000 |" in markdown
    assert "0.400 +- 0.141 | 10 (18) | 501 |" in markdown and "6 volumes" in markdown
    assert "R-CNN trained 5 epochs on plain phantoms" in markdown


@pytest.mark.slow
def test_smoke_run_writes_the_table_with_all_arms(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "va_ablation.py"), "--smoke", "--out", str(tmp_path)]
    cmd += ["--arms", *ablation.ARMS]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=600, capture_output=True)
    report = json.loads((tmp_path / "ablation.json").read_text())
    runs = {r["arm"]: r for r in report["runs"]}
    assert [r["arm"] for r in report["table"]] == list(ablation.ARMS) and set(runs) == set(ablation.ARMS)
    assert {arm: r["blocks"] for arm, r in runs.items()} == {a: list(b) for a, (_, b, _) in ablation.ARMS.items()}
    images = {arm: r["images_per_target"] for arm, r in runs.items()}
    assert images == {"baseline": 1, "channel": 9, "spatial": 9, "full": 9, "full_paper": 9}
    params = {arm: r["parameters"] for arm, r in runs.items()}
    assert params["baseline"] < params["spatial"] < params["channel"] < params["full"]
    assert params["spatial"] < params["full_paper"] < params["full"]  # 4 hidden units (64 // 16) instead of 16
    assert runs["full"]["form"]["gate_norm"] is True and runs["full_paper"]["form"]["gate_norm"] is False
    levels = ["0", "1", "2", "3", "pool"]  # the blocks' measurements, per FPN level, in training and held out
    assert list(runs["full"]["training_watch"]["epochs"][0]["levels"]) == levels
    assert list(runs["full"]["evaluation_watch"]["levels"]) == levels and "training_watch" not in runs["baseline"]
    assert all(0 <= r["lesion_dice_per_case"] <= 1 and r["volumes"] == 1 for r in runs.values())
    pretrained = report["settings"]["overrides"]["pretrained_path"]
    assert pretrained == str(tmp_path / "pretrain" / "models" / "resume_checkpoint_epoch=1.pt")
    assert (tmp_path / "lits_plain").is_dir() and not (tmp_path / "lits_plain" / "context_lookalikes.json").exists()
    markdown = (tmp_path / "ablation.md").read_text()
    assert all(f"| {model} |" in markdown for model, _, _ in ablation.ARMS.values())


def test_demo_args_name_settings_the_configs_have():
    """The demo job's args file (which the ablation trains every arm with) sets only ids that train.json or
    inference.json declare: a misspelt key would add an unused id and leave the paper's value in force."""
    demo = json.loads(ablation.DEMO_ARGS.read_text())
    declared = set()
    for name in ("train.json", "inference.json"):
        declared |= set(json.loads((ablation.CONFIGS / name).read_text()))
    assert set(demo) <= declared, sorted(set(demo) - declared)
    assert ablation.DEMO_OVERRIDES["bag_size"] == 9 and demo["bag_size"] == 3  # the arms read the config's bag


def test_context_blind_ceiling_by_hand(tmp_path, monkeypatch):
    """Per held-out volume 2 L / (2 L + T) for L lesion and T look-alike voxels of the drawn phantom (a detector
    calling every look-alike voxel lesion and perfect otherwise); without lesion 0 when look-alikes are called
    lesion, as the LiTS scorer gives; the mean over the volumes."""
    from shared.phantoms import lits

    class Case:
        def __init__(self, ids):
            self.lesions = np.array(ids)
            self.lesion_list = [None] * (max(ids) if ids else 0)

    drawn = {3: (Case([1, 1, 1, 2, 0]), {1}), 5: (Case([1, 2, 2, 2, 2]), {0})}  # object 2 of 3, object 1 of 5: tubes
    drawn[7] = (Case([1, 1, 0]), {0})  # a look-alike and no lesion
    monkeypatch.setattr(lits, "draw_volume", lambda key, seed, shape, context, **options: drawn[key])
    held_out = {"validation": [{"case": "volume-3"}, {"case": "volume-5"}, {"case": "volume-7"}]}
    monkeypatch.setattr("shared.data.lits.make_datalist", lambda root, seed: held_out)
    ceiling = ablation.context_blind_ceiling(tmp_path, [8, 8, 8], {"context_bag": 9})
    assert ceiling["cases"] == {"volume-3": pytest.approx(6 / 7), "volume-5": pytest.approx(8 / 9), "volume-7": 0.0}
    assert ceiling["mean"] == pytest.approx((6 / 7 + 8 / 9) / 3)
