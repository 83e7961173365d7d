"""benchmarks/csatt_ablation.py: every arm reaches the bundle as the model it claims, a mislabelled arm is refused,
look-alikes are counted at the 4 FPs operating point, and a tiny run writes the table with all arms."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from benchmarks import csatt_ablation as ablation
from shared.data.deeplesion import read_annotations
from shared.metrics.deeplesion import key_slices, write_detections
from shared.networks.three_dce import ThreeDCE
from shared.phantoms.deeplesion import LOOKALIKES_NAME, make_phantoms

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arm", list(ablation.ARMS))
def test_each_arm_builds_the_table3_model_it_claims(arm, tmp_path):
    """The knobs go in as the lower-case strings the command line gives ('false' must not switch a block on)."""
    overrides = ablation.arm_overrides(arm, seed=0, data=tmp_path, arm_dir=tmp_path, epochs=2)
    assert overrides["contextual_attention"] in ("true", "false") and overrides["spatial_attention"] in (
        "true",
        "false",
    )
    parser = ConfigParser()
    parser.read_config(str(ablation.CONFIGS / "train.json"))
    parser.update(overrides)
    network = parser.get_parsed_content("network_def")
    found = ablation.check_arm(arm, network, "built")
    assert found["blocks"] == list(ablation.ARMS[arm][1])
    assert found["parameters"] == sum(p.numel() for p in network.parameters())


def test_a_mislabelled_arm_is_refused():
    both = ThreeDCE(3, "tiny", contextual=True, spatial=True)
    plain = ThreeDCE(3, "tiny", contextual=False, spatial=False)
    assert ablation.check_arm("both", both, "built")["blocks"] == ["contextual", "spatial"]
    with pytest.raises(SystemExit, match=r"arm 3dce \(3DCE\): the trainer's network holds CS-Att blocks"):
        ablation.check_arm("3dce", both, "trainer's")
    with pytest.raises(SystemExit, match="contextual"):
        ablation.check_arm("contextual", plain, "evaluated")
    block = 32 * 32 * 9 + 32  # phi_C or phi_S on the tiny backbone's 32 channels
    assert ablation.attention_blocks(both)["parameters"] - ablation.attention_blocks(plain)["parameters"] == 2 * block
    assert (
        ablation.attention_blocks(both)["attention_kernels"] == [3]
        and ablation.attention_blocks(plain)["attention_kernels"] == []
    )
    unattended = ThreeDCE(3, "tiny", spatial=True, attention_kernel_size=1, rpn_attended=False)
    assert ablation.attention_blocks(unattended)["attention_kernels"] == [1]
    assert ablation.attention_blocks(unattended)["rpn_reads"] == ["key_unattended"]
    assert ablation.attention_blocks(both)["rpn_reads"] == ["key"]


def test_score_counts_lookalikes_found_at_4_fps(tmp_path):
    data = make_phantoms(tmp_path / "data", num_cases=6, seed=4, image_size=64, context=True)
    lookalikes = json.loads((data / LOOKALIKES_NAME).read_text())
    truth = key_slices(read_annotations(data), "test")
    names = [f"{k.series}_{k.slice:03d}.png" for k in truth]
    on_test = [(k, lookalikes[name]) for k, name in zip(truth, names) if name in lookalikes]
    assert on_test
    key, boxes = on_test[0]
    lesion = key.boxes[0]
    detections = [
        {"series": key.series, "slice": key.slice, "box": lesion, "score": 0.9},
        {"series": key.series, "slice": key.slice, "box": [v - 1.0 for v in boxes[0]], "score": 0.8},  # 0-based
    ]
    write_detections(tmp_path / "eval" / "detections.json", detections)
    scored = ablation.score(tmp_path / "eval", data)
    total = sum(len(b) for _, b in on_test)
    assert scored["lookalikes"] == total and scored["lookalikes_hit_at_4fp"] == pytest.approx(1 / total)
    assert scored["images"] == len(truth) and scored["sensitivity"][3] == pytest.approx(1 / scored["lesions"])


def test_summary_gives_mean_and_sd_over_seeds():
    def record(arm, seed, sens4, hit):
        return {
            "arm": arm,
            "seed": seed,
            "parameters": 100 if arm == "3dce" else 120,
            "blocks": list(ablation.ARMS[arm][1]),
            "sensitivity": [sens4 / 2, sens4 / 2, sens4, sens4, sens4, sens4],
            "images": 30,
            "lesions": 50,
            "lookalikes": 40,
            "lookalikes_hit_at_4fp": hit,
            "train_s": 10.0 + seed,
            "train_cpu_s": 18.0 + seed,
            "peak_rss_mib": 500.0 + seed,
        }

    records = [record("3dce", 0, 0.4, 0.5), record("3dce", 1, 0.6, 0.3), record("both", 0, 0.7, 0.1)]
    settings = {"epochs": 8, "seeds": [0, 1], "parallel": 2, "threads": 1, "overrides": {"num_images": 5}}
    rows, markdown = ablation.summarize(records, settings)
    assert [r["arm"] for r in rows] == ["3dce", "both"]
    assert rows[0]["sensitivity_mean"][3] == pytest.approx(0.5) and rows[0]["sensitivity_sd"][3] == pytest.approx(
        0.1414, abs=1e-4
    )
    assert rows[0]["lookalikes_hit_at_4fp_mean"] == pytest.approx(0.4) and rows[1]["seeds"] == 1
    assert "| 3DCE | 100 | none | 2 | 0.250 +- 0.071 |" in markdown
    assert "| 3DCE + CS-Att (contextual + spatial) | 120 | contextual, spatial | 1 |" in markdown
    assert "0.100 +- 0.000 | 10 (18) | 500 |" in markdown


@pytest.mark.slow
def test_smoke_run_writes_the_table_with_all_arms(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "csatt_ablation.py"), "--smoke", "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=600, capture_output=True)
    report = json.loads((tmp_path / "ablation.json").read_text())
    runs = {r["arm"]: r for r in report["runs"]}
    assert set(runs) == set(ablation.ARMS) and [r["arm"] for r in report["table"]] == list(ablation.ARMS)
    assert {arm: r["blocks"] for arm, r in runs.items()} == {a: list(b) for a, (_, b) in ablation.ARMS.items()}
    params = {arm: r["parameters"] for arm, r in runs.items()}
    assert params["3dce"] < params["contextual"] == params["spatial"] < params["both"]
    assert all(0 <= s <= 1 for r in runs.values() for s in r["sensitivity"]) and runs["both"]["lookalikes"] > 0
    assert all(len(r["training_watch"]["optimizer_groups"]) == 1 for r in runs.values())  # attention_lr_mult 1
    markdown = (tmp_path / "ablation.md").read_text()
    assert all(f"| {model} |" in markdown for model, _ in ablation.ARMS.values())


def test_plain_phantoms_are_scored_without_a_lookalike_column(tmp_path):
    """The demo's phantoms have no look-alikes across slices: none are counted, and the table shows none."""
    data = make_phantoms(tmp_path / "data", num_cases=6, seed=4, image_size=64)
    assert not (data / LOOKALIKES_NAME).exists()
    truth = key_slices(read_annotations(data), "test")
    key = truth[0]
    write_detections(
        tmp_path / "eval" / "detections.json",
        [{"series": key.series, "slice": key.slice, "box": key.boxes[0], "score": 0.9}],
    )
    scored = ablation.score(tmp_path / "eval", data)
    assert scored["lookalikes"] == 0 and scored["lookalikes_hit_at_4fp"] is None
    assert scored["sensitivity"][3] == pytest.approx(1 / scored["lesions"])
    record = {
        "arm": "spatial",
        "seed": 0,
        "parameters": 120,
        "blocks": ["spatial"],
        **scored,
        "train_s": 10.0,
        "train_cpu_s": 18.0,
        "peak_rss_mib": 500.0,
    }
    settings = {"epochs": 8, "seeds": [0], "parallel": 2, "threads": 1, "overrides": {"num_images": 5}}
    settings["phantoms"] = "plain"
    rows, markdown = ablation.summarize([record], settings)
    assert rows[0]["lookalikes_hit_at_4fp_mean"] is None
    assert markdown.startswith("Held-out plain phantoms:") and "| - | 10 (18) | 500 |" in markdown


def test_each_record_says_what_rate_the_attention_layers_trained_at():
    from types import SimpleNamespace

    import torch

    from shared.engines.param_groups import scaled_lr_groups

    network = ThreeDCE(3, "tiny", contextual=False, spatial=True)
    optimizer = torch.optim.SGD(scaled_lr_groups(network, 0.02, {"backbone.attention": 3}), lr=0.02)
    with ablation.optimizer_groups("training", network, SimpleNamespace(optimizer=optimizer)) as watched:
        pass
    attention = sum(p.numel() for p in network.backbone.attention.parameters())
    total = sum(p.numel() for p in network.parameters())
    assert watched["optimizer_groups"] == [
        {"lr": 0.02, "parameters": total - attention},
        {"lr": pytest.approx(0.06), "parameters": attention},
    ]
    with ablation.optimizer_groups("evaluation", network, None) as watched:
        pass
    assert watched == {}
