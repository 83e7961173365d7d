"""The msan_kits bundle's configs: metadata, network checks, export, bad inputs, and (slow) train/resume/evaluate/infer.

Every run is tiny (phantoms of 16x32x32 voxels, 16x16x8 patches, 4-32 channels) and writes into tmp dirs only.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from shared.data.kits19 import make_datalist
from shared.data.validation import DatasetError
from shared.networks.msan import MSAN
from shared.phantoms.kits19 import make_phantoms
from shared.transforms.sample_log import loaded_samples
from tests.conftest import META_SCHEMA_MD5, REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "msan_kits"
CONFIGS = BUNDLE / "configs"
TINY_CHANNELS = [4, 8, 16, 32]
TINY = {
    "bundle_root": str(BUNDLE),
    "spacing": "$None",
    "patch_size": [16, 16, 8],
    "network_def#channels": TINY_CHANNELS,
    "num_workers": 0,
    "sw_batch_size": 2,
}


def _configs(*names: str) -> list[str]:
    return [str(CONFIGS / name) for name in names]


def _workflow(*names: str, **override) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=_configs(*names), workflow_type=None, **{**TINY, **override})
    workflow.initialize()
    return workflow


def _training_data(**override) -> None:
    """Initialize train.json and build its datalist, where the dataset root is checked."""
    _workflow("train.json", **override).parser.get_parsed_content("datalist")


def _tiny_network(**kwargs) -> MSAN:
    return MSAN(channels=TINY_CHANNELS, **kwargs)


@pytest.fixture(scope="module")
def kits_root(tmp_path_factory) -> Path:
    """Four phantom cases (2 training, 1 test, 1 validation) of 16 slices of 32x32."""
    return make_phantoms(tmp_path_factory.mktemp("kits") / "kits19", num_cases=4, shape=(16, 32, 32))


def test_metadata_verifies_against_the_schema(meta_schema):
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(meta_schema), hash_val=META_SCHEMA_MD5)


def test_network_input_output_shapes_match_metadata():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        **{"network_def#channels": TINY_CHANNELS},
    )


def test_torchscript_export_equals_eager(tmp_path):
    torch.manual_seed(0)
    net = _tiny_network().eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")  # models/model.pt is the plain state dict of network_def
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        **{"network_def#channels": TINY_CHANNELS},
    )
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 1, 16, 16, 4)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


def _root_cause(err: BaseException) -> BaseException:
    """MONAI wraps a failing config component in RuntimeErrors; the user sees the original error above them."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def test_missing_dataset_stops_with_instructions(tmp_path):
    # MONAI Label runs `initialize` with its own datalists (docs/monailabel.md, 11): only the datalist checks the root
    workflow = _workflow("train.json", dataset_dir=str(tmp_path / "no_such_root"), ckpt_dir=str(tmp_path / "models"))
    assert workflow.parser["resume"] is False  # a resume file left in models/ must not end a new run at once
    with pytest.raises(RuntimeError) as err:
        workflow.run()
    assert not (tmp_path / "models").exists()
    cause = _root_cause(err.value)
    assert isinstance(cause, DatasetError)
    assert "no_such_root: dataset root not found" in str(cause) and "python -m shared phantoms kits19" in str(cause)


def _cli_training(kits_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    """The user's `monai.bundle run training` command on the phantoms, with tiny sizes."""
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json")]
    command += ["--dataset_dir", str(kits_root), "--ckpt_dir", str(tmp_path / "models")]
    command += ["--output_dir", str(tmp_path / "runs"), "--spacing", "$None", "--patch_size", "[16,16,8]"]
    return command + ["--network_def#channels", str(TINY_CHANNELS), "--num_workers", "0", *extra]


@pytest.mark.parametrize("knob", ["resume", "amp", "deep_supervision"])
def test_boolean_knob_typed_as_neither_stops_naming_it(kits_root, tmp_path, knob):
    done = subprocess.run(
        _cli_training(kits_root, tmp_path, "--epochs", "1", f"--{knob}", "maybe"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    assert f"python -m monai.bundle run: {knob}: expected true or false (or 1 / 0), got 'maybe'" in done.stderr
    assert not list((tmp_path / "models").glob("*.pt"))


def _write_like(path: Path, data: np.ndarray, reference: Path) -> None:
    nib.Nifti1Image(data, nib.load(reference).affine).to_filename(path)


def _labels_outside(case: Path) -> None:
    seg = case / "segmentation.nii.gz"
    _write_like(seg, np.full(nib.load(seg).shape, 5, np.uint8), seg)


def _flat_image(case: Path) -> None:
    _write_like(case / "imaging.nii.gz", np.zeros((32, 32), np.int16), case / "imaging.nii.gz")


def _shape_mismatch(case: Path) -> None:
    seg = case / "segmentation.nii.gz"
    _write_like(seg, np.zeros((8, 32, 32), np.uint8), seg)


def _corrupt(case: Path) -> None:
    data = (case / "imaging.nii.gz").read_bytes()
    (case / "imaging.nii.gz").write_bytes(data[: len(data) // 2])


def _no_kidney(case: Path) -> None:
    seg = case / "segmentation.nii.gz"
    _write_like(seg, np.zeros(nib.load(seg).shape, np.uint8), seg)


@pytest.mark.parametrize(
    "corrupt",
    [
        _labels_outside,
        _flat_image,
        _shape_mismatch,
        _corrupt,
        _no_kidney,
    ],
)
def test_bad_training_case_stops_before_training_naming_the_case(kits_root, tmp_path, corrupt):
    root = shutil.copytree(kits_root, tmp_path / "kits19")
    corrupt(root / "case_00001")
    with pytest.raises(RuntimeError) as err:
        _training_data(dataset_dir=str(root), ckpt_dir=str(tmp_path / "models")).run()
    cause = _root_cause(err.value)
    assert isinstance(cause, DatasetError) and "case_00001" in str(cause)
    assert not (tmp_path / "models").exists()


def test_inference_refuses_bad_input_and_writes_nothing(kits_root, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(kits_root / "case_00000" / "imaging.nii.gz", inputs / "good.nii.gz")
    nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)).to_filename(inputs / "slice.nii.gz")
    torch.save(_tiny_network().state_dict(), tmp_path / "model.pt")
    with pytest.raises(RuntimeError) as err:
        _workflow(
            "inference.json",
            dataset_dir=str(inputs),
            ckpt_path=str(tmp_path / "model.pt"),
            output_dir=str(tmp_path / "out"),
        )
    message = str(_root_cause(err.value))
    assert "slice.nii.gz: not a 3D volume" in message and "good.nii.gz" not in message
    assert not (tmp_path / "out").exists()


def _run(run_id: str, *names: str, **override) -> None:
    workflow = _workflow(*names, run_id=run_id, **override)
    workflow.run()
    workflow.finalize()


@pytest.mark.slow
def test_train_resume_evaluate_infer_ensemble(kits_root, tmp_path):
    models = tmp_path / "models"
    command = _cli_training(kits_root, tmp_path, "--epochs", "2", "--val_interval", "1")  # the user's command
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
    best = torch.load(models / "model.pt", weights_only=True)  # the plain state dict of network_def
    _tiny_network(variant="v1").load_state_dict(best)
    resume = torch.load(models / "resume_checkpoint_epoch=2.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(resume)

    # `--resume false` typed on the command line (the string 'false') starts afresh beside the epoch-2 file
    fresh = shutil.copytree(models, tmp_path / "fresh" / "models")
    command = _cli_training(kits_root, tmp_path / "fresh", "--epochs", "1", "--val_interval", "1", "--resume", "false")
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
    assert (fresh / "resume_checkpoint_epoch=1.pt").is_file()  # resumed from epoch 2, it would have run no epoch

    # resume: asked for 3 epochs, the trainer starts epoch 3 from the epoch-2 weights
    workflow = _workflow("train.json", dataset_dir=str(kits_root), epochs=3, ckpt_dir=str(models), resume=True)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network = workflow.parser.get_parsed_content("network")
    seen = {}

    def first_epoch(engine):
        seen["epoch"] = engine.state.epoch
        seen["same_weights"] = all(torch.equal(v, resume["model"][k]) for k, v in network.state_dict().items())
        engine.terminate()

    trainer.add_event_handler(Events.EPOCH_STARTED, first_epoch)
    workflow.run()
    assert seen == {"epoch": 3, "same_weights": True}
    # without --resume true (a MONAI Label training in the same models/), a new run starts at epoch 1
    workflow = _workflow("train.json", dataset_dir=str(kits_root), epochs=3, ckpt_dir=str(models))
    workflow.parser.get_parsed_content("train#trainer").add_event_handler(Events.EPOCH_STARTED, first_epoch)
    network = workflow.parser.get_parsed_content("network")
    workflow.run()
    assert seen == {"epoch": 1, "same_weights": False}

    # evaluation of the test split: predictions in the image's space, CSV table, overlay
    eval_dir = tmp_path / "eval"
    _run(
        "evaluating",
        "train.json",
        "evaluate.json",
        dataset_dir=str(kits_root),
        ckpt_dir=str(models),
        eval_dir=str(eval_dir),
    )
    csv = (eval_dir / "kits19_metrics.csv").read_text().splitlines()
    assert csv[0] == "case,kidney_dice,tumour_dice,mean_dice" and csv[1].startswith("case_00180,")
    assert (eval_dir / "overlay.png").stat().st_size > 0

    # inference on a folder of volumes: same shape and affine as the input, labels in {0, 1, 2}
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = kits_root / "case_00180" / "imaging.nii.gz"
    shutil.copy(image, inputs / "case_00180.nii.gz")
    out = tmp_path / "predictions"
    _run(
        "inference", "inference.json", dataset_dir=str(inputs), ckpt_path=str(models / "model.pt"), output_dir=str(out)
    )
    _check_prediction(out / "case_00180_seg.nii.gz", image)

    # the five-member vote (untrained members suffice to check the wiring)
    members = tmp_path / "members"
    for name, variant, ds in [
        ("unet", "unet", 0),
        ("v1", "v1", 0),
        ("v1_ds", "v1", 1),
        ("v2", "v2", 1),
        ("v2_ds", "v2", 1),
    ]:
        (members / name).mkdir(parents=True)
        net = _tiny_network(variant=variant, deep_supervision=bool(ds))
        torch.save(net.state_dict(), members / name / "model.pt")
    (members / "v2" / "model.pt").write_bytes((members / "v2_ds" / "model.pt").read_bytes())  # strict load fails
    with pytest.raises(RuntimeError):
        _run(
            "inference",
            "inference.json",
            "inference_ensemble.json",
            dataset_dir=str(inputs),
            ensemble_ckpt_dir=str(members),
            output_dir=str(tmp_path / "bad"),
        )
    torch.save(_tiny_network(variant="v2").state_dict(), members / "v2" / "model.pt")
    ensemble_out = tmp_path / "ensemble"
    _run(
        "inference",
        "inference.json",
        "inference_ensemble.json",
        dataset_dir=str(inputs),
        ensemble_ckpt_dir=str(members),
        output_dir=str(ensemble_out),
    )
    _check_prediction(ensemble_out / "case_00180_seg.nii.gz", image)


@pytest.mark.slow
def test_multi_gpu_train_runs_ddp_on_two_cpu_processes(kits_root, tmp_path):
    """Two gloo processes under torchrun: each rank logs the volumes it loads (LogSampled, its own stdout through
    torchrun's --redirects); the ranks split the training set, and only rank 0 writes the checkpoints and the logs."""
    files = str(_configs("train.json", "multi_gpu_train.json"))
    overrides = {**TINY, "dataset_dir": kits_root, "epochs": 1, "val_interval": 1, "batch_size": 1}
    overrides.update(ckpt_dir=tmp_path / "models", output_dir=tmp_path / "runs")
    # the phantoms' validation split is one case; each rank needs one (DistributedSampler(even_divisible=False))
    overrides["validate#dataset#data"] = "$@datalist['validation'] + @datalist['test']"
    logs = tmp_path / "torchrun_logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--redirects", "3"]
    cmd += ["--log_dir", str(logs), "-m", "monai.bundle", "run", "training", "--config_file", files]
    cmd += [a for k, v in overrides.items() for a in (f"--{k}", json.dumps(v) if isinstance(v, list) else str(v))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    stdout = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    assert done.returncode == 0, done.stderr[-3000:] + "".join(v[-2000:] for v in stdout.values())
    assert sorted(stdout) == [0, 1]

    loaded = {rank: loaded_samples(text).get(rank, []) for rank, text in stdout.items()}
    names = sorted(e["image"] for e in make_datalist(kits_root)["training"])
    per_rank = math.ceil(len(names) / 2)  # DistributedSampler(even_divisible=True) pads to 2 * ceil(N / 2)
    assert len(loaded[0]) == len(loaded[1]) == per_rank
    assert sorted(set(loaded[0]) | set(loaded[1])) == names  # together they cover the training set
    assert len(set(loaded[0]) & set(loaded[1])) == 2 * per_rank - len(names)  # and share only the padding

    # one checkpoint set (best model + one resume file) and one TensorBoard log, from rank 0 only
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt", "resume_checkpoint_epoch=1.pt"]
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))  # named ...tfevents.<time>.<host>.<pid>.<n>
    assert events and len({p.name.split(".")[-2] for p in events}) == 1
    assert "train_loss" in stdout[0] and "train_loss" not in stdout[1]


def _check_prediction(pred_path: Path, image_path: Path) -> None:
    pred, image = nib.load(pred_path), nib.load(image_path)
    assert pred.shape == image.shape
    assert np.allclose(pred.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
