"""cs_att_deeplesion bundle: metadata, run ids, and train/evaluate/inference of both networks on tiny phantoms."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, create_workflow, run, verify_metadata, verify_net_in_out

from shared.data.deeplesion import make_datalist
from shared.phantoms.deeplesion import make_phantoms
from shared.transforms.sample_log import loaded_samples
from tests.bundle_cases import export_torchscript
from tests.conftest import META_SCHEMA_MD5

CONFIGS = ("train.json", "evaluate.json", "inference.json")
# evaluate.json is an overlay on train.json (model-zoo style); va_faster_rcnn.json swaps the network in any of them
BASES = {
    "train.json": ("train.json",),
    "evaluate.json": ("train.json", "evaluate.json"),
    "inference.json": ("inference.json",),
}
VA_OVERLAY = "va_faster_rcnn.json"
RUN_IDS = {
    "train.json": ("training", "run"),
    "evaluate.json": ("evaluating", "run"),
    "inference.json": ("inference", "run"),
}
# tiny sizes: 64 px images, M = 3, 1 epoch, no workers, no ImageNet VGG-16 file (the paper's M = 5 and VGG-16
# weights are the defaults: tests/test_csatt_paper_defaults.py)
TINY = {"max_size": 64, "spacing_mm": 4.0, "num_workers": 0, "num_images": 3, "pretrained": False}


@pytest.fixture(scope="module")
def configs(repo_root):
    return repo_root / "bundles" / "cs_att_deeplesion" / "configs"


def test_metadata_verifies_offline(configs, meta_schema, tmp_path):
    verify_metadata(
        meta_file=str(configs / "metadata.json"),
        filepath=str(meta_schema),
        hash_val=META_SCHEMA_MD5,
        create_dir=False,
    )


def _files(configs, name: str, *overlays: str) -> list[str]:
    return [str(configs / f) for f in (*BASES[name], *overlays)]


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_define_the_run_ids_and_paper_settings(configs, name):
    parser = ConfigParser()
    parser.read_config(_files(configs, name))
    for run_id in (*RUN_IDS[name], "initialize"):
        assert run_id in parser.config, f"{name} lacks {run_id}"
    assert parser["hu_window"] == [-1024, 3071] and parser["spacing_mm"] == 0.8 and parser["max_size"] == 512
    assert parser["slice_interval_mm"] == 2.0
    if name == "train.json":  # CS-Att sec. 3
        assert parser["epochs"] == 6 and parser["lr_milestones"] == [4, 5] and parser["batch_size"] == 2
        assert parser["learning_rate"] == 1e-3 and parser["momentum"] == 0.9 and parser["weight_decay"] == 5e-5


def test_train_initialize_needs_no_dataset_and_the_datalist_checks_it(configs, tmp_path):
    """MONAI Label runs `initialize` with its own datalists (docs/monailabel.md, 11): only the datalist validates."""
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser["dataset_dir"] = str(tmp_path / "missing_root")
    parser["pretrained"] = False  # the default ImageNet VGG-16 file: tests/test_csatt_paper_defaults.py
    parser.get_parsed_content("initialize")
    assert parser["resume"] is False  # a resume file left in models/ must not end a new (MONAI Label) run at once
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("datalist")
    messages, error = [], err.value
    while error is not None:  # monai wraps the DatasetError of ensure_valid
        messages.append(str(error))
        error = error.__cause__
    assert any("missing_root" in m and "not found" in m for m in messages)


def test_metadata_labels_the_served_box_volume(configs):
    meta = json.loads((configs / "metadata.json").read_text())
    outputs = meta["network_data_format"]["outputs"]
    assert next(iter(outputs)) == "pred" and next(iter(meta["network_data_format"]["inputs"])) == "image"
    assert outputs["pred"]["channel_def"] == {"0": "background", "1": "lesion"}


def test_metadata_describes_m_three_slice_images_in_and_padded_detections_out(configs):
    meta = json.loads((configs / "metadata.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    num_images = ConfigParser.load_config_file(str(configs / "inference.json"))["num_images"]
    assert image["num_channels"] == 3 * num_images == 15 and image["value_range"] == [0, 1]
    assert image["channel_def"]["7"] == "image 3 of 5, channel 1: key slice"
    assert image["channel_def"]["0"] == "image 1 of 5, channel 0: key slice -14 mm"
    assert (pred["type"], pred["num_channels"], pred["spatial_shape"]) == ("object", 1, [100, 6])
    assert meta["network_data_format"]["post_processed_outputs"]["pred"]["format"] == "segmentation"


# the network at test sizes: tiny backbone, M = 3 (9 channels)
TINY_NET = {"backbone": "tiny", "num_images": 3, "_meta_#network_data_format#inputs#image#num_channels": 9}


def test_verify_net_in_out_passes(configs):
    """`python -m monai.bundle verify_net_in_out network_def` (the full-size command passes too, 50 s on 2 cores)."""
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        device="cpu",
        n=8,
        **TINY_NET,
    )


def _tiny_network(configs):
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser["backbone"], parser["num_images"] = "tiny", 3
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def").eval()


def test_batched_output_is_the_padded_detections(configs):
    network = _tiny_network(configs)
    images = torch.rand(2, 9, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        padded, listed = network(images), network(list(images))
    assert padded.shape == (2, 1, 100, 6) and padded.dtype == torch.float32
    for rows, det in zip(padded[:, 0], listed):
        k = len(det["boxes"])
        assert k > 0  # an untrained detector still proposes (scores >= 0.001)
        expected = torch.cat([det["boxes"], det["scores"][:, None], det["labels"][:, None].float()], dim=1)
        torch.testing.assert_close(rows[:k], expected)
        assert not rows[k:].any()


def test_ckpt_export_gives_the_eager_detections(configs, tmp_path):
    """`python -m monai.bundle ckpt_export network_def` scripts the network (TorchScript); the exported model finds
    the same boxes, scores and labels as the eager network."""
    eager = _tiny_network(configs)
    exported = export_torchscript(configs, eager, tmp_path, **TINY_NET)
    image = torch.rand(9, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (expected,) = eager([image])
        losses, (found,) = exported([image])
    assert losses == {} and len(expected["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(found[key], expected[key])


def test_inference_workflow_has_monai_inference_properties(configs, tmp_path, phantom_root):
    """`check_properties` of the inference workflow finds every property (MONAI's InferProperties) without data;
    its dataset lists the inputs when first used."""
    workflow = create_workflow(
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        workflow_type="inference",
        dataset_dir=str(tmp_path / "not_yet_there"),
        backbone="tiny",
    )
    assert workflow.check_properties() == []
    workflow.initialize()
    with pytest.raises(Exception, match="not_yet_there does not exist"):
        len(workflow.dataset)
    workflow.dataset_dir = str(phantom_root)
    workflow.initialize()
    test_keys = {(e["series"], e["key_slice"]) for e in make_datalist(phantom_root)["test"]}
    assert {(Path(e["image"]).name, e["key_slice"]) for e in workflow.dataset} == test_keys


@pytest.mark.parametrize("name", CONFIGS)
def test_va_overlay_replaces_the_network(configs, name):
    """One overlay for the three configs: the VA Faster R-CNN, its weights in models/va_faster_rcnn/."""
    parser = ConfigParser()
    parser.read_config(_files(configs, name, VA_OVERLAY))
    assert parser["network_def"]["_target_"] == "shared.networks.va_rcnn.build_va_faster_rcnn"
    assert parser["num_images"] == 3  # VA sec. 3.3: bag of 3 images = 9 slices
    ckpt_id = "ckpt_dir" if name == "train.json" else "ckpt_path"
    assert "models/va_faster_rcnn" in parser.get_parsed_content(ckpt_id)
    parser["backbone"] = "resnet18"
    parser["max_size"] = 64
    network = parser.get_parsed_content("network_def")
    assert any(type(m).__name__ == "VolumetricAttention" for m in network.modules())


@pytest.mark.parametrize("name", ["train.json", "inference.json"])
def test_va_overlay_block_knobs_reach_the_blocks(configs, name):
    """The VA knobs of va_maskrcnn_lits, typed as the command line gives them (strings), set every VA block."""

    def blocks(**knobs):
        parser = ConfigParser()
        parser.read_config(_files(configs, name, VA_OVERLAY))
        for key, value in {"backbone": "resnet18", "max_size": 64, **knobs}.items():
            parser[key] = value
        network = parser.get_parsed_content("network_def")
        return [m for m in network.modules() if type(m).__name__ == "VolumetricAttention"]

    paper = blocks()
    assert paper and all(b.channel and b.spatial and b.sequential and not b.bag_residual for b in paper)
    assert all(not (b.spatial_scale or b.gate_norm) for b in paper)
    changed = blocks(channel_attention="false", bag_residual="true", gate_norm="True")
    assert len(changed) == len(paper)
    assert all(not b.channel and b.spatial and b.bag_residual and b.gate_norm for b in changed)
    assert blocks(attention="0") == []


# A run id added by an extra config file: the CS-Att parameters of the network built from the user's flags.
PROBE = {
    "probe": "$print('CS-Att:', sorted({k.split('.')[2] for k in @network_def.state_dict() if '.attention.' in k}),"
    " '\\nRPN reads:', @network_def.backbone.rpn_feature_names)"
}


@pytest.mark.parametrize("name", ["train.json", "inference.json"])
def test_attention_flags_typed_on_the_command_line(repo_root, configs, name, tmp_path):
    """`--contextual_attention false` (fire passes the string 'false') builds 3DCE without the contextual attention's
    parameters, both flags false give plain 3DCE, `--rpn_attended false` gives the RPN the unattended key image; a
    word that is not a boolean stops the run naming the knob."""
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps(PROBE))
    files = f"['{configs / name}','{probe}']"

    def run_probe(**flags):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "probe", "--config_file", files, "--backbone", "tiny"]
        cmd += [a for k, v in flags.items() for a in (f"--{k}", v)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)

    def parts(**flags):
        done = run_probe(**flags)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split("CS-Att:")[1].splitlines()[0].strip()

    assert "phi_c" in parts(contextual_attention="true")
    assert "phi_c" not in parts(contextual_attention="false")
    assert parts(contextual_attention="false", spatial_attention="false") == "[]"
    assert "RPN reads: ('key_unattended',)" in run_probe(rpn_attended="false").stdout
    done = run_probe(contextual_attention="nope")
    assert done.returncode != 0
    assert "contextual_attention: expected true or false (or 1 / 0), got 'nope'" in done.stderr


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    return make_phantoms(tmp_path_factory.mktemp("deeplesion"), num_cases=3, seed=0, image_size=64)


def _volume_dir(tmp_path):
    folder = tmp_path / "volumes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    nib.save(
        nib.Nifti1Image(rng.normal(0, 200, (40, 36, 5)).astype(np.float32), np.diag([2.0, 2.0, 5.0, 1.0])),
        str(folder / "ct.nii.gz"),
    )
    return folder


def _run_all(configs, overlays, phantom_root, tmp_path, **network):
    """Train 1 epoch, resume to 2, evaluate on validation, infer on the test split and on a volume."""
    models, cache = tmp_path / "models", tmp_path / "cache"
    paths = [_files(configs, name, *overlays) for name in CONFIGS]
    common = {**TINY, **network, "dataset_dir": str(phantom_root), "cache_dir": str(cache)}
    train = {**common, "ckpt_dir": str(models), "output_dir": str(tmp_path / "runs"), "batch_size": 2}
    run("training", config_file=paths[0], **train, epochs=1)
    assert (models / "model.pt").is_file() and list(models.glob("resume_*epoch=1.pt"))
    saved = (models / "model.pt").stat().st_mtime_ns
    # --resume true: a finished 1-epoch run resumed to 1 epoch trains nothing (model.pt untouched)
    run("training", config_file=paths[0], **train, epochs=1, resume=True)
    assert (models / "model.pt").stat().st_mtime_ns == saved
    run("training", config_file=paths[0], **train, epochs=2, resume=True)  # resumes from epoch 1
    assert list(models.glob("resume_*epoch=2.pt"))
    assert list(cache.glob("*.npz"))

    ckpt = str(models / "model.pt")
    eval_dir = tmp_path / "eval"
    run("evaluating", config_file=paths[1], **common, ckpt_path=ckpt, output_dir=str(eval_dir), split="validation")
    summary = json.loads((eval_dir / "summary.json").read_text())
    for rate in ("0.5", "1", "2", "4", "8", "16"):
        value = summary[f"sens@{rate}"]
        assert value is None or 0.0 <= value <= 1.0
    assert summary["ap50"] is None or 0.0 <= summary["ap50"] <= 1.0 or math.isnan(summary["ap50"])
    for name in ("froc.png", "table2.csv", "sensitivity.csv", "detections.json"):
        assert (eval_dir / name).is_file()
    assert list(eval_dir.glob("detections_*.png"))

    out = tmp_path / "out"
    run("inference", config_file=paths[2], **common, ckpt_path=ckpt, output_dir=str(out))
    test_keys = {(e["series"], e["key_slice"]) for e in make_datalist(phantom_root)["test"]}
    dets = json.loads((out / "detections.json").read_text())["detections"]
    assert {(d["series"], d["slice"]) for d in dets} <= test_keys

    vol_out = tmp_path / "vol_out"
    volumes = _volume_dir(tmp_path)
    run(
        "inference",
        config_file=paths[2],
        **{**common, "dataset_dir": str(volumes)},
        ckpt_path=ckpt,
        output_dir=str(vol_out),
        min_score=0.0,
        label_threshold=0.0,
    )
    dets = json.loads((vol_out / "detections.json").read_text())["detections"]
    assert dets and {d["slice"] for d in dets} <= set(range(5))
    assert all(len(d["world_corners"]) == 2 and math.isfinite(d["score"]) for d in dets)
    assert nib.load(str(vol_out / "ct_boxes.nii.gz")).shape == (40, 36, 5)
    return models


@pytest.mark.slow
def test_3dce_csatt_train_resume_evaluate_infer(configs, phantom_root, tmp_path):
    models = _run_all(configs, (), phantom_root, tmp_path, backbone="tiny", num_images=3)
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("backbone.attention.phi_c") for k in state)
    # model.pt is the plain state dict of network_def (what ckpt_export and MONAI Label load)
    parser = ConfigParser()
    parser.read_config(_files(configs, "inference.json"))
    parser["backbone"] = "tiny"
    assert set(state) == set(parser.get_parsed_content("network_def").state_dict())


@pytest.mark.slow
def test_va_faster_rcnn_train_resume_evaluate_infer(configs, phantom_root, tmp_path):
    models = _run_all(configs, (VA_OVERLAY,), phantom_root, tmp_path, backbone="resnet18")
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("backbone.attention.") for k in state)


@pytest.mark.slow
def test_multi_gpu_train_runs_ddp_on_two_cpu_processes(repo_root, configs, phantom_root, tmp_path):
    """Two gloo processes under torchrun: each rank logs the samples it loads (its own stdout through torchrun's
    --redirects); the ranks split the training set, and only rank 0 writes the checkpoints and the logs."""
    files = f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']"
    overrides = {**TINY, "backbone": "tiny", "epochs": 1, "dataset_dir": phantom_root, "cache_dir": tmp_path / "cache"}
    overrides.update(ckpt_dir=tmp_path / "models", output_dir=tmp_path / "runs")
    logs = tmp_path / "torchrun_logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--redirects", "3"]
    cmd += ["--log_dir", str(logs), "-m", "monai.bundle", "run", "training", "--config_file", files]
    cmd += [a for k, v in overrides.items() for a in (f"--{k}", str(v))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    stdout = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    assert done.returncode == 0, done.stderr[-3000:] + "".join(v[-2000:] for v in stdout.values())
    assert sorted(stdout) == [0, 1]

    loaded = {rank: loaded_samples(text).get(rank, []) for rank, text in stdout.items()}
    names = sorted(e["file_name"] for e in make_datalist(phantom_root)["training"])
    per_rank = math.ceil(len(names) / 2)  # DistributedSampler(even_divisible=True) pads to 2 * ceil(N / 2)
    assert len(loaded[0]) == len(loaded[1]) == per_rank
    assert sorted(set(loaded[0]) | set(loaded[1])) == names  # together they cover the training set
    assert len(set(loaded[0]) & set(loaded[1])) == 2 * per_rank - len(names)  # and share only the padding

    # one checkpoint set (best model + one resume file) and one TensorBoard log, from rank 0 only
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt", "resume_checkpoint_epoch=1.pt"]
    # TensorBoard event files are named events.out.tfevents.<time>.<host>.<pid>.<n>: all from one process
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events and len({p.name.split(".")[-2] for p in events}) == 1
    assert "train_loss" in stdout[0] and "train_loss" not in stdout[1]
