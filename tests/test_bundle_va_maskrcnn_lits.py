"""va_maskrcnn_lits bundle: metadata, train/evaluate/inference and DDP on two CPU processes at tiny sizes, bad input."""

import json
import os
import subprocess
import sys
import traceback

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

from shared.data.lits import make_datalist
from shared.phantoms.lits import make_phantoms
from shared.transforms.sample_log import loaded_samples
from shared.transforms.slice_bags import bag_slice_indices
from tests.bundle_cases import export_torchscript
from tests.conftest import META_SCHEMA_MD5, VA_TINY_NETWORK

TINY = {
    **VA_TINY_NETWORK,
    "score_threshold": 0.05,
    "num_workers": 0,
    "pretrained": "false",  # the default loads COCO weights from models/; tests start from random weights
    "frozen_batchnorm": "false",
}
NETWORK = {k: TINY[k] for k in ("image_size", "bag_size", "backbone")}


def _run(repo_root, config_files, run_id: str, overrides: dict, launcher=(), check=True):
    cmd = [sys.executable, *launcher, "-m", "monai.bundle", "run", run_id, "--config_file", config_files]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    result = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"{run_id} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def configs(repo_root):
    return repo_root / "bundles" / "va_maskrcnn_lits" / "configs"


def _evaluate_files(configs) -> str:
    """evaluate.json is an overlay on train.json (model-zoo style): both files, as `--config_file` takes them."""
    return f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']"


@pytest.fixture(scope="module")
def lits_root(tmp_path_factory):
    return make_phantoms(tmp_path_factory.mktemp("lits"), num_cases=8, shape=(32, 32, 12), num_test=1)


@pytest.fixture(scope="module")
def trained(repo_root, configs, lits_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("va_run")
    overrides = {**TINY, "dataset_dir": lits_root, "epochs": 1, "samples_per_epoch": 4, "batch_size": 2}
    overrides.update(ckpt_dir=work / "models", output_dir=work / "runs")
    result = _run(repo_root, str(configs / "train.json"), "training", overrides)
    return work, result


def test_metadata_passes_the_schema(configs, meta_schema):
    verify_metadata(meta_file=str(configs / "metadata.json"), filepath=str(meta_schema), hash_val=META_SCHEMA_MD5)


def test_metadata_describes_the_network_and_the_served_volumes(configs):
    """network_data_format describes network_def (as the model zoo's): a bag of 9 2.5D images = 27 slices in [0, 1]
    in, the target slice's label map out; post_processed_outputs the served 3D label volume. MONAI Label
    (docs/monailabel.md, 7) takes the label names from outputs.pred.channel_def (and reports the dimension of
    inputs.image.spatial_shape, 2: the network works on slices)."""
    fmt = json.loads((configs / "metadata.json").read_text())["network_data_format"]
    assert next(iter(fmt["inputs"])) == "image" and next(iter(fmt["outputs"])) == "pred"
    labels = {"0": "background", "1": "liver", "2": "lesion"}
    assert fmt["outputs"]["pred"]["channel_def"] == fmt["post_processed_outputs"]["pred"]["channel_def"] == labels
    image = fmt["inputs"]["image"]
    bag_size = _parser(configs, "inference.json")["bag_size"]
    assert image["num_channels"] == 27 == 3 * bag_size and image["value_range"] == [0, 1]
    assert image["channel_def"]["0"] == "slice target-13" and image["channel_def"]["13"] == "target slice"
    assert image["channel_def"]["26"] == "slice target+13"
    assert len(image["spatial_shape"]) == len(fmt["outputs"]["pred"]["spatial_shape"]) == 2
    assert len(fmt["post_processed_outputs"]["pred"]["spatial_shape"]) == 3


def test_verify_net_in_out_passes(configs):
    """`python -m monai.bundle verify_net_in_out network_def` (here at tiny sizes: a bag of 3 images, 9 channels):
    network_def takes what metadata.json describes and returns one float channel."""
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        device="cpu",
        **NETWORK,
        frozen_batchnorm=False,
        **{"_meta_#network_data_format#inputs#image#num_channels": 9},
    )


def _phantom_bag(lits_root, bag_size: int) -> torch.Tensor:
    """The bag around the middle slice of phantom volume 0, windowed to [0, 1] as the bundle's preprocessing does."""
    volume = np.asarray(nib.load(lits_root / "volume-0.nii").dataobj, dtype=np.float32)
    slices = torch.from_numpy(np.clip((volume + 200.0) / 500.0, 0.0, 1.0)).permute(2, 0, 1)  # (D, H, W)
    depth = slices.shape[0]
    return slices[torch.as_tensor(bag_slice_indices(depth // 2, depth, bag_size))]


def test_ckpt_export_gives_the_eager_detections(configs, lits_root, tmp_path):
    """`python -m monai.bundle ckpt_export network_def` scripts the network (TorchScript); the exported model finds
    the same boxes, scores, labels and masks as the eager network on a phantom slice."""
    values = {**NETWORK, "frozen_batchnorm": False}
    torch.manual_seed(0)
    eager = _parser(configs, "inference.json", **values).get_parsed_content("network_def").eval()
    exported = export_torchscript(configs, eager, tmp_path, **values)
    bag = _phantom_bag(lits_root, TINY["bag_size"])
    with torch.no_grad():
        (expected,) = eager([bag])
        losses, (found,) = exported([bag])
    assert losses == {} and len(expected["boxes"]) > 0  # an untrained detector still proposes (scores >= 0.05)
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(found[key], expected[key])


def _parser(configs, name: str, **values) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(
        [str(configs / "train.json"), str(configs / name)] if name == "evaluate.json" else str(configs / name)
    )
    for key, value in values.items():
        parser[key] = value
    return parser


@pytest.mark.parametrize("pretrained", [False, True])
@pytest.mark.parametrize("name", ["inference.json", "evaluate.json"])
def test_saved_training_state_dict_fits_the_inference_network(configs, name, pretrained):
    """MONAI Label loads model.pt with strict=False: the keys train.json saves must be exactly the network's keys
    (FrozenBatchNorm2d has no num_batches_tracked; frozen only when starting from pretrained weights). evaluate.json
    inherits train.json's rule; inference.json has no pretrained_path and is told with --frozen_batchnorm (README)."""
    keys = {}
    for config in ("train.json", name):
        given = {"frozen_batchnorm": str(pretrained).lower()} if config == "inference.json" else {}
        parser = _parser(configs, config, **NETWORK, **given, pretrained=str(pretrained).lower())
        if config != "inference.json":
            assert parser.get_parsed_content("frozen_batchnorm") is pretrained
        keys[config] = set(parser.get_parsed_content("network_def").state_dict())
    assert keys["train.json"] == keys[name]


# A run id added by an extra config file: which VA attention modules the network built from the user's flags has.
PROBE = {
    "probe": "$print('VA blocks:', sum(type(m).__name__ == 'VolumetricAttention' for m in @network_def.modules()))"
}


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_attention_flag_typed_on_the_command_line(repo_root, configs, config, tmp_path):
    """`--attention false` (fire passes the string 'false') builds the baseline without any VA block; a word that is
    not a boolean stops the run naming the knob."""
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps(PROBE))
    files = f"['{configs / config}','{probe}']"
    tiny = {**NETWORK, "pretrained": "false"}
    blocks = {}
    for typed in ("true", "false"):
        result = _run(repo_root, files, "probe", {**tiny, "attention": typed})
        blocks[typed] = int(result.stdout.split("VA blocks:")[1].split()[0])
    assert blocks["true"] > 0 and blocks["false"] == 0
    result = _run(repo_root, files, "probe", {**tiny, "attention": "nope"}, check=False)
    assert result.returncode != 0
    assert "attention: expected true or false (or 1 / 0), got 'nope'" in result.stderr


def test_inference_exposes_the_model_zoo_output_knobs(configs, tmp_path):
    """output_ext, output_dtype, output_postfix and separate_folder at the top level reach SaveImaged; the top-level
    checkpointloader is the handler the evaluator attaches."""
    parser = _parser(
        configs,
        "inference.json",
        output_dir=str(tmp_path),
        output_ext=".nii",
        output_dtype="$numpy.int16",
        output_postfix="labels",
        separate_folder="true",
    )
    save = parser.get_parsed_content("postprocessing").transforms[-1]
    layout = save.saver.folder_layout
    assert (layout.ext, layout.postfix, layout.parent) == (".nii", "labels", True)
    assert save.saver.init_kwargs["output_dtype"] == np.int16
    handlers = parser.get_parsed_content("handlers")
    assert handlers[0] is parser.get_parsed_content("checkpointloader")


def test_train_initialize_needs_no_dataset_and_the_datalist_checks_it(configs, tmp_path):
    """MONAI Label runs `initialize` with its own datalists (docs/monailabel.md, 11): only the datalist validates,
    and a resume file left in models/ is used only with --resume true."""
    parser = _parser(configs, "train.json", dataset_dir=str(tmp_path / "missing_root"), pretrained="false")
    parser.get_parsed_content("initialize")
    assert parser["resume"] is False
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("datalist")
    # monai wraps the DatasetError of ensure_valid: the user sees it in the chained traceback
    assert "missing_root: dataset root not found" in "".join(traceback.format_exception(err.value))


def test_train_defaults_are_the_papers(configs):
    """VA paper sec. 3: "all hyperparameters are as in [10] for the Mask-RCNN" (mmdetection's 1x schedule): SGD,
    momentum 0.9, weight decay 1e-4, lr 0.02 per 16 images scaled linearly to the batch, linear warm-up (500 iterations
    from 1/3), lr / 10 at 8/12 and 11/12 of the iterations, 12 epochs of one pass over the training slices; sec. 3.2:
    slices scaled to 1024 x 1024 (bilinear), bag of 9 images, feature extractor and RPN from COCO, mmdetection's
    256-channel FPN; eq. 3 without a 1/(H*W) scale. Values by hand: batch 2 -> lr 0.0025; 100 iterations per epoch ->
    1200 iterations, warm-up 100 (500 capped at 1/12 of the schedule), steps at iterations 800 and 1100."""
    stand_ins = {"train#dataloader": list(range(100)), "train#dataset": list(range(200))}  # 200 training slices
    parser = _parser(configs, "train.json", pretrained="false", **stand_ins)
    parser.get_parsed_content("initialize")
    optimizer = parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 0.0001)
    assert parser["batch_size"] == 2 and parser["epochs"] == 12 and parser["bag_size"] == 9
    assert parser.get_parsed_content("learning_rate") == pytest.approx(0.0025)
    assert parser.get_parsed_content("samples_per_epoch") == 200  # an epoch: one pass over the training slices
    scheduler = parser.get_parsed_content("lr_scheduler")
    lrs = []
    for _ in range(1200):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = {0: 0.0025 / 3, 50: 0.0025 * 2 / 3, 100: 0.0025, 799: 0.0025, 800: 0.00025, 1099: 0.00025}
    expected[1100] = 0.000025
    for iteration, lr in expected.items():
        assert lrs[iteration] == pytest.approx(lr), iteration
    handler = parser.get_parsed_content("train#handlers#0")
    assert handler.epoch_level is False  # the schedule counts iterations
    assert parser.get_parsed_content("frozen_batchnorm") is False
    for name in ("train.json", "inference.json"):
        config = _parser(configs, name)
        assert config["image_size"] == 1024 and config["resize_mode"] == "bilinear"
        resize = next(t for t in config.get_parsed_content("preprocessing").transforms if type(t).__name__ == "Resized")
        assert resize.mode[0] == "bilinear" and resize.anti_aliasing[0] is True  # the image (key 0): bilinear
        assert config.get_parsed_content("network_def#spatial_scale") is False
        # eq. 2-3's sigmoid gates as written, C / 16 hidden units (16 at 256 channels)
        assert config.get_parsed_content("network_def#gate_norm") is False
        assert config.get_parsed_content("network_def#min_hidden") == 1
        assert config.get_parsed_content("network_def#spatial_relu") is True  # relu, conv, sigmoid as sec. 2.2
        assert config.get_parsed_content("network_def#sequential") is True  # sec. 1: channel, then spatial
        config["sequential"] = "false"  # as the command line gives it
        blocks = [
            m for m in config.get_parsed_content("network_def", instantiate=True).modules() if hasattr(m, "sequential")
        ]
        assert len(blocks) == 5 and not any(m.sequential for m in blocks)  # one block per FPN level, each parallel
        assert config.get_parsed_content("network_def#bag_residual") is False  # the paper's output: gated target only
        assert not any(m.bag_residual for m in blocks)
        config["bag_residual"] = "true"
        network = config.get_parsed_content("network_def", instantiate=True)
        blocks = [m for m in network.modules() if hasattr(m, "bag_residual")]
        assert len(blocks) == 5 and all(m.bag_residual for m in blocks)
        assert config["fpn_channels"] == 256  # mmdetection's Mask R-CNN FPN, the COCO checkpoint's width
    defaults = _parser(configs, "train.json")
    assert defaults["pretrained"] is True and defaults.get_parsed_content("frozen_batchnorm") is True
    assert defaults.get_parsed_content("pretrained_path").endswith("models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    parts = defaults.get_parsed_content("load_pretrained#prefixes")
    assert list(parts) == ["backbone", "rpn"]  # "feature extractor and RPN"


def test_default_training_without_the_weights_stops_at_once_naming_them(repo_root, configs, tmp_path):
    """The full-scale default starts from COCO Mask R-CNN weights: without the file (nothing is downloaded) the run
    stops before reading any data, with one line naming the file and where to get it."""
    overrides = {**NETWORK, "dataset_dir": tmp_path / "no_data", "ckpt_dir": tmp_path / "models"}
    result = _run(repo_root, str(configs / "train.json"), "training", overrides, check=False)
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert line == (
        "python -m monai.bundle run: "
        f"pretrained weights {tmp_path / 'models' / 'maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth'} not found: download"
        " https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth to that path (or give"
        " --pretrained_path <file>), or train from random weights with --pretrained false"
    )
    assert "Traceback" not in result.stderr and "no_data" not in result.stderr


def test_bundle_has_no_scripts_folder(configs):
    """`shared.packaging.pack_bundle` copies configs, docs, LICENSE and shared/: bundle-local code is not packed."""
    assert not (configs.parent / "scripts").exists()
    assert "scripts." not in "".join(p.read_text() for p in configs.glob("*.json"))


@pytest.mark.slow
def test_training_writes_checkpoints_and_logs_every_loss(configs, trained):
    work, result = trained
    assert (work / "models" / "model.pt").is_file()
    # model.pt is the plain state dict of network_def (what ckpt_export and MONAI Label load)
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = _parser(configs, "train.json", **NETWORK, pretrained="false")
    assert set(state) == set(network.get_parsed_content("network_def").state_dict())
    assert (work / "models" / "resume_checkpoint_epoch=1.pt").is_file()
    assert list((work / "runs" / "cache").glob("*/image.npy"))  # volumes preprocessed once into the cache
    log = result.stdout + result.stderr
    for name in ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        assert name in log
    assert "val_lesion_dice" in log


@pytest.mark.slow
def test_evaluation_writes_table_overlay_and_predictions_in_input_space(repo_root, configs, lits_root, trained):
    work, _ = trained
    out = work / "eval"
    overrides = {**TINY, "dataset_dir": lits_root, "ckpt_dir": work / "models", "output_dir": out}
    result = _run(repo_root, _evaluate_files(configs), "evaluating", overrides)
    assert "lesion_dice_per_case" in result.stdout and "lesion_dice_small" in result.stdout
    rows = (out / "lits_metrics.csv").read_text().splitlines()
    cases = [e["case"] for e in make_datalist(lits_root)["validation"]]
    assert len(rows) >= 1 + len(cases) and all(any(c in r for r in rows) for c in cases)
    assert (out / "overlay.png").stat().st_size > 0
    for case in cases:
        pred = nib.load(out / "predictions" / f"{case}_seg.nii.gz")
        ref = nib.load(lits_root / f"segmentation-{case.split('-')[1]}.nii")
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}


@pytest.mark.slow
def test_inference_on_nifti_and_dicom_folder(repo_root, configs, lits_root, trained, tmp_path, totalseg_dir):
    work, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "test-volume-0.nii").symlink_to(lits_root / "test-volume-0.nii")
    (inputs / "dicom_case").symlink_to(totalseg_dir / "example_ct_dicom")
    out = tmp_path / "out"
    _run(
        repo_root,
        str(configs / "inference.json"),
        "inference",
        {**TINY, "dataset_dir": inputs, "ckpt_dir": work / "models", "output_dir": out},
    )
    pred = nib.load(out / "test-volume-0_seg.nii.gz")
    image = nib.load(lits_root / "test-volume-0.nii")
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)
    dicom_pred = nib.load(out / "dicom_case_seg.nii.gz")
    assert dicom_pred.shape == (512, 512, 20)


@pytest.mark.slow
def test_inference_refuses_a_corrupt_volume_and_writes_nothing(repo_root, configs, lits_root, trained, tmp_path):
    work, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "test-volume-0.nii").symlink_to(lits_root / "test-volume-0.nii")
    (inputs / "volume-bad.nii").write_bytes((lits_root / "volume-0.nii").read_bytes()[:500])
    out = tmp_path / "out"
    overrides = {**TINY, "dataset_dir": inputs, "ckpt_dir": work / "models", "output_dir": out}
    result = _run(repo_root, str(configs / "inference.json"), "inference", overrides, check=False)
    assert result.returncode != 0
    assert "volume-bad.nii: cannot be read" in result.stderr and "nothing written" in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_training_refuses_labels_outside_the_lits_classes(repo_root, configs, lits_root, tmp_path):
    root = tmp_path / "lits"
    root.mkdir()
    for name in ("volume-0.nii", "segmentation-0.nii", "volume-1.nii", "segmentation-1.nii"):
        (root / name).write_bytes((lits_root / name).read_bytes())
    bad = nib.load(root / "segmentation-1.nii")
    data = np.asarray(bad.dataobj).copy()
    data[0, 0, 0] = 7
    nib.Nifti1Image(data, bad.affine).to_filename(root / "segmentation-1.nii")
    overrides = {**TINY, "dataset_dir": root, "epochs": 1, "ckpt_dir": tmp_path / "m", "output_dir": tmp_path / "r"}
    result = _run(repo_root, str(configs / "train.json"), "training", overrides, check=False)
    assert result.returncode != 0
    assert "segmentation-1.nii" in result.stderr and "7" in result.stderr


@pytest.mark.slow
def test_multi_gpu_train_runs_ddp_on_two_cpu_processes(repo_root, configs, lits_root, tmp_path):
    """Two gloo processes under torchrun: each rank logs the slices it loads (LogSampled, its own stdout through
    torchrun's --redirects); the ranks draw from disjoint parts of the training slices, and only rank 0 writes the
    checkpoints and the logs."""
    files = f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']"
    overrides = {**TINY, "dataset_dir": lits_root, "epochs": 1, "samples_per_epoch": 8, "batch_size": 1}
    overrides.update(ckpt_dir=tmp_path / "models", output_dir=tmp_path / "runs")
    logs = tmp_path / "torchrun_logs"
    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--redirects", "3", "--log_dir", str(logs))
    _run(repo_root, files, "training", overrides, launcher=launcher)
    stdout = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    assert sorted(stdout) == [0, 1]

    loaded = {rank: loaded_samples(text).get(rank, []) for rank, text in stdout.items()}
    assert len(loaded[0]) == len(loaded[1]) == 4  # samples_per_epoch // world size, with replacement
    cases = {e["case"] for e in make_datalist(lits_root)["training"]}
    assert {name.split(":")[0] for name in loaded[0] + loaded[1]} <= cases
    # DistributedWeightedRandomSampler: each rank draws from its own half of the slices (they share at most the one
    # padding slice); without it both ranks, seeded alike, would draw the same slices
    assert len(set(loaded[0]) & set(loaded[1])) <= 1 and set(loaded[0]) != set(loaded[1])

    # one checkpoint set (best model + one resume file) and one TensorBoard log, from rank 0 only
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt", "resume_checkpoint_epoch=1.pt"]
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))  # named ...tfevents.<time>.<host>.<pid>.<n>
    assert events and len({p.name.split(".")[-2] for p in events}) == 1
    assert "loss_classifier" in stdout[0] and "loss_classifier" not in stdout[1]
