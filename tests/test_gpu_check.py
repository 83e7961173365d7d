"""scripts/gpu_check.sh: the full-size plan is the papers' sizes and builds the bundles' networks; the tiny CPU run
reports every bundle with the planned inputs; a section over its share stops."""

import importlib.util
import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops import FrozenBatchNorm2d

REPO = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _gpu_check()


def test_full_size_plan_lists_the_papers_sizes():
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--plan"], cwd=REPO, capture_output=True, text=True, check=True
    )
    plan = json.loads(result.stdout)
    assert plan["va_maskrcnn_lits"]["sizes"] == {"image_px": 1024, "bag_size": 9, "backbone": "resnet50", "batch": 2}
    assert plan["cs_att_deeplesion"]["sizes"] == {"image_px": 512, "M": 5, "backbone": "vgg16", "batch": 2}
    assert plan["msan_kits"]["sizes"] == {
        "patch": [512, 512, 4],
        "batch": 2,
        "channels": [32, 64, 128, 256],
        "variant": "v2",
        "deep_supervision": True,
    }
    assert all(entry["volume"] == [512, 512, 100] for entry in plan.values())


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_full_size_plan_builds_the_bundles_networks(config):
    overrides = {b: entry["overrides"] for b, entry in gpu_check.plan(tiny=False).items()}

    def network(bundle):
        return gpu_check.bundle_parser(bundle, config, overrides[bundle]).get_parsed_content("network_def")

    va = network("va_maskrcnn_lits")
    body = va.backbone.body
    assert type(va).__name__ == "VAMaskRCNN" and va.backbone.bag_size == 9 and va.transform.min_size == (1024,)
    assert isinstance(body.layer1[0], Bottleneck) and len(body.layer3) == 6  # ResNet-50: 3, 4, 6, 3 blocks
    assert isinstance(body.bn1, FrozenBatchNorm2d)  # as the COCO-pretrained run, though the weights are random
    three_dce = network("cs_att_deeplesion")
    assert type(three_dce).__name__ == "ThreeDCE" and three_dce.backbone.num_images == 5
    assert sum(isinstance(m, nn.Conv2d) for m in three_dce.backbone.body.modules()) == 13  # VGG-16 to relu5_3
    msan = gpu_check._network_record(network("msan_kits"))
    assert msan["network"] == "MSAN" and msan["architecture"] == "MSAN-V2 with deep supervision"
    assert msan["parameters"] == 6_331_743  # the bundle README's count for MSAN-V2+DS at channels 32-256


def test_tiny_cpu_run_reports_every_bundle(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = ["bash", "scripts/gpu_check.sh", "--device", "cpu", "--tiny", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["size"] == "tiny" and "random" in report["weights"]
    # architecture, training input (batch 2: bags of 3 x 3 slices, 3DCE M=3 x 3 slices, MSAN slabs), unit
    expected = {
        "va_maskrcnn_lits": ("VAMaskRCNN", [2, 9, 64, 64], "img/s"),
        "cs_att_deeplesion": ("ThreeDCE", [2, 9, 64, 64], "img/s"),
        "msan_kits": ("MSAN-V2 with deep supervision", [2, 1, 32, 32, 4], "vol/s"),
    }
    assert set(report["bundles"]) == set(expected)
    for bundle, (architecture, shape, unit) in expected.items():
        off, on = report["bundles"][bundle]["rows"]
        assert on["amp"] is True and "CUDA only" in on["skipped"]
        train, infer = off["train"], off["inference"]
        assert not {"error", "stopped"} & (set(train) | set(infer)), (train, infer)
        assert train["first_step_s"] > 0 and len(train["step_s"]) == 2 and min(train["step_s"]) > 0
        assert train["architecture"] == infer["architecture"] == architecture
        assert train["input_shape"] == shape and train["peak_mib"] is None
        assert train["backends"]["cudnn_deterministic"] is True  # train.json's initialize (set_determinism) ran
        assert train["unit"] == unit and train["throughput"] == pytest.approx(2 / train["median_step_s"])
        assert infer["seconds"] > 0 and infer["input_shape"][:4] == [1, 1, 64, 64]  # the 64 x 64 phantom slices
        assert f"| {bundle} | off |" in result.stdout and f"| {bundle} | on | skipped" in result.stdout
    assert report["bundles"]["cs_att_deeplesion"]["rows"][0]["inference"]["inferer"] == "BoxLabelInferer"


def test_timer_stops_a_section_at_its_share():
    start = time.perf_counter()
    with pytest.raises(gpu_check.OverBudget):
        with gpu_check.time_limit(0.2):
            time.sleep(5)
    assert time.perf_counter() - start < 2


def test_training_stops_stepping_when_no_share_is_left():
    overrides = gpu_check.plan(tiny=True)["msan_kits"]["overrides"]
    record = {}
    gpu_check.train_section("msan_kits", overrides, torch.device("cpu"), False, steps=3, share=0.0, record=record)
    assert record["first_step_s"] > 0 and record["step_s"] == [] and record["stopped"].startswith("budget")
