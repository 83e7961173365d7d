"""The precision and data-loading knobs of the three bundles, read from the real configs as the command line types
them (strings): ``--amp`` reaches every trainer, evaluator and inferer, ``--tf32`` sets TF32 when a run initializes
(and va_maskrcnn_lits's ``--flush_denormal`` flushes denormal floats on the CPU),
``--channels_last`` puts a detector's convolution weights in NHWC without changing what it computes, and the training
and validation loaders keep their workers between epochs and pin memory on CUDA.

Engines are built, never run, on stand-in datasets with ``device`` set to CUDA (the network stays on the CPU), so
they are configured as on a GPU machine, where the detection trainer keeps ``amp`` (it drops it on the CPU).
"""

import contextlib

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from shared.engines import precision
from shared.engines.inferers import deeplesion, volume_boxes
from shared.networks.three_dce import ThreeDCE
from shared.transforms.deeplesion import LoadDeepLesionSampled
from tests.conftest import REPO_ROOT
from tests.test_bundle_configs import _config_sets

BUNDLES_DIR = REPO_ROOT / "bundles"
ON_GPU = {"device": "$torch.device('cuda')", "network": "$@network_def"}
TINY = {  # network sizes of tests/test_bundle_*.py
    "msan_kits": {"network_def#channels": [4, 8, 16, 32]},
    "va_maskrcnn_lits": {"image_size": 32, "bag_size": 3, "backbone": "resnet18", "pretrained": "false"},
    "cs_att_deeplesion": {"max_size": 64, "num_images": 3, "backbone": "tiny"},
}
FOUR, TWO = "$list(range(4))", "$list(range(2))"  # stand-in datasets
TRAIN_DATA = {"train#dataset": FOUR, "validate#dataset": TWO}
# (bundle, config files, stand-in data, ids of the engines built); lits' weighted sampler reads the real slices
AMP_CASES = [
    ("msan_kits", ("train.json",), TRAIN_DATA, ("train#trainer", "validate#evaluator")),
    ("msan_kits", ("train.json", "evaluate.json"), {"validate#dataset": TWO}, ("validate#evaluator",)),
    ("msan_kits", ("inference.json",), {"dataset": TWO}, ("evaluator",)),
    (
        "msan_kits",
        ("inference.json", "inference_ensemble.json"),
        {"dataset": TWO, "evaluator#networks": "@ensemble_networks"},  # the members stay on the CPU too
        ("evaluator",),
    ),
    (
        "va_maskrcnn_lits",
        ("train.json",),
        {**TRAIN_DATA, "train#sampler": None},
        ("train#trainer", "validate#evaluator"),
    ),
    ("va_maskrcnn_lits", ("train.json", "evaluate.json"), {"validate#dataset": TWO}, ("validate#evaluator",)),
    ("va_maskrcnn_lits", ("inference.json",), {"dataset": TWO}, ("evaluator",)),
    ("cs_att_deeplesion", ("train.json",), TRAIN_DATA, ("train#trainer", "validate#evaluator")),
]
AMP_IDS = [f"{bundle}/{'+'.join(files)}" for bundle, files, *_ in AMP_CASES]


def _parser(bundle: str, files: tuple[str, ...], tmp_path, **override) -> ConfigParser:
    """The bundle's configs with ``override`` set as ``--key value`` would, every output folder under ``tmp_path``."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLES_DIR / bundle / "configs" / name) for name in files])
    parser.update({"bundle_root": str(tmp_path), **TINY[bundle], **override})
    parser.parse()
    return parser


@pytest.fixture
def tf32_restored():
    """Put the process's TF32 flags back after a test that sets them."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("typed", ["true", "false"])
@pytest.mark.parametrize(("bundle", "files", "data", "engines"), AMP_CASES, ids=AMP_IDS)
def test_amp_typed_on_the_command_line_reaches_every_engine(tmp_path, bundle, files, data, engines, typed):
    parser = _parser(bundle, files, tmp_path, amp=typed, **ON_GPU, **data)
    for engine_id in engines:
        assert parser.get_parsed_content(engine_id).amp is (typed == "true"), engine_id


@pytest.mark.parametrize("typed", ["true", "false"])
def test_amp_reaches_the_deeplesion_evaluation_and_inference(tmp_path, typed):
    """cs_att evaluate.json and inference.json call functions: the flag is what they are given."""
    evaluate = _parser("cs_att_deeplesion", ("train.json", "evaluate.json"), tmp_path, amp=typed)
    assert evaluate.get_parsed_content("evaluation#amp") is (typed == "true")
    inference = _parser("cs_att_deeplesion", ("inference.json",), tmp_path, amp=typed)
    assert inference.get_parsed_content("inferring#amp") is (typed == "true")
    assert inference.get_parsed_content("inferer").inferer.amp is (typed == "true")  # MONAI Label's path


@pytest.mark.parametrize("amp", [True, False])
def test_deeplesion_inference_runs_the_network_under_the_amp_switch(tmp_path, monkeypatch, amp):
    """Every network call of cs_att's inference (CT volumes, DeepLesion key slices) is inside autocast(device, amp)."""
    calls = []

    def recording(device, enabled):
        calls.append((torch.device(device).type, enabled))
        return contextlib.nullcontext()

    monkeypatch.setattr(deeplesion, "autocast", recording)
    monkeypatch.setattr(volume_boxes, "autocast", recording)
    torch.manual_seed(0)
    model = ThreeDCE(num_images=3, backbone="tiny", fc_channels=32, box_score_thresh=0.0).eval()
    volume = np.random.default_rng(0).normal(0, 300, (24, 24, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1])), str(tmp_path / "a.nii"))
    loader = LoadDeepLesionSampled(num_images=3)
    deeplesion.run_inference(model, tmp_path, tmp_path / "out", loader, batch_size=2, label_threshold=None, amp=amp)
    assert calls == [("cpu", amp)] * 2  # 4 slices, 2 key slices a batch
    calls.clear()
    sample = {"image": torch.rand(9, 32, 32), "scale": 1.0, "origin": (0, 0)}  # as LoadDeepLesionSampled gives
    entries = [{"image": "series_a", "key_slice": k} for k in (3, 4, 5)]
    deeplesion.detect_entries(model, entries, lambda entry: sample, amp=amp)
    assert calls == [("cpu", amp)] * 3


def test_autocast_is_on_only_when_asked_for_on_a_gpu():
    with precision.autocast("cpu", True):
        assert not torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("cpu")
    with precision.autocast("cuda", False):
        assert not torch.is_autocast_enabled("cuda")
    if torch.cuda.is_available():
        with precision.autocast("cuda:0", True):
            assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.float16


@pytest.mark.parametrize("files", _config_sets(), ids=lambda s: "/".join(s))
def test_every_config_sets_tf32_when_it_initializes(files):
    """Every config file and overlay (as tests/test_bundle_configs.py composes them) runs set_tf32 in initialize."""
    bundle, *names = files
    parser = ConfigParser()
    parser.read_config([str(BUNDLES_DIR / bundle / "configs" / name) for name in names])
    assert "@set_tf32" in parser["initialize"]


def _msan_inference_inputs(tmp_path) -> dict:
    """A weights file and one small CT, which msan_kits inference.json checks when it initializes."""
    (tmp_path / "model.pt").touch()
    (tmp_path / "ct").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), str(tmp_path / "ct" / "a.nii.gz"))
    return {"ckpt_path": str(tmp_path / "model.pt"), "dataset_dir": str(tmp_path / "ct")}


@pytest.mark.parametrize("typed", ["true", "false"])
@pytest.mark.parametrize("bundle", ["msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion"])
@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_tf32_typed_on_the_command_line_is_set_by_initialize(tmp_path, tf32_restored, config, bundle, typed):
    extra = _msan_inference_inputs(tmp_path) if (bundle, config) == ("msan_kits", "inference.json") else {}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = typed != "true"
    _parser(bundle, (config,), tmp_path, tf32=typed, **extra).get_parsed_content("initialize")
    assert torch.backends.cuda.matmul.allow_tf32 is (typed == "true")
    assert torch.backends.cudnn.allow_tf32 is (typed == "true")


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("bundle", ["msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion"])
def test_train_and_validation_loaders_keep_workers_and_pin_memory_on_cuda(tmp_path, bundle, device, num_workers):
    data = {**TRAIN_DATA, "train#sampler": None} if bundle == "va_maskrcnn_lits" else TRAIN_DATA
    override = {"device": f"$torch.device('{device}')", "network": "$@network_def", "num_workers": num_workers}
    parser = _parser(bundle, ("train.json",), tmp_path, **override, **data)
    train = parser.get_parsed_content("train#dataloader")
    assert train.num_workers == num_workers
    assert train.persistent_workers is (num_workers > 0) and train.pin_memory is (device == "cuda")
    validate = parser.get_parsed_content("validate#dataloader")
    if bundle == "va_maskrcnn_lits":  # whole cached volumes, loaded in the main process
        assert validate.num_workers == 0 and not validate.persistent_workers
    else:
        assert validate.num_workers == num_workers
        assert validate.persistent_workers is (num_workers > 0) and validate.pin_memory is (device == "cuda")


def _detector_batch(bundle: str) -> tuple[list[torch.Tensor], list[dict]]:
    """One 3-image bag (9 channels) with a bright square and its target, at the TINY sizes."""
    size = 32 if bundle == "va_maskrcnn_lits" else 64
    image = 0.1 * torch.rand(9, size, size, generator=torch.Generator().manual_seed(0))
    image[:, 8:20, 10:24] += 0.8
    target = {"boxes": torch.tensor([[10.0, 8.0, 24.0, 20.0]]), "labels": torch.tensor([1])}
    if bundle == "va_maskrcnn_lits":
        target["masks"] = (image[:1] > 0.5).to(torch.uint8)
    return [image], [target]


@pytest.mark.parametrize("bundle", ["va_maskrcnn_lits", "cs_att_deeplesion"])
def test_channels_last_puts_detector_weights_in_nhwc_and_keeps_the_losses(tmp_path, bundle):
    cpu = {"device": "$torch.device('cpu')"}
    plain = _parser(bundle, ("train.json",), tmp_path, channels_last="false", **cpu).get_parsed_content("network")
    nhwc = _parser(bundle, ("train.json",), tmp_path, channels_last="true", **cpu).get_parsed_content("network")
    convs = [p for p in nhwc.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs if p.shape[-1] > 1)
    assert not any(p.is_contiguous() for p in convs if p.shape[-1] > 1 and p.shape[1] > 1)
    assert all(p.is_contiguous() for p in plain.parameters())
    nhwc.load_state_dict(plain.state_dict())  # copies keep each model's layout
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs if p.shape[-1] > 1)
    losses = []
    for model in (plain, nhwc):
        torch.manual_seed(0)  # the RPN and RoI samplers draw at random
        losses.append(model.train()(*_detector_batch(bundle)))
    assert losses[0].keys() == losses[1].keys()
    for name in losses[0]:
        assert torch.allclose(losses[0][name], losses[1][name], rtol=1e-3, atol=1e-5), name


def _flushes_denormals() -> bool:
    """Whether CPU float32 arithmetic now gives 0 for a product in the denormal range (1e-39)."""
    return (torch.tensor([1e-30]) * 1e-9).item() == 0.0


@pytest.fixture
def denormals_restored():
    """Keep denormals again after a test that may flush them (torch's default)."""
    yield
    torch.set_flush_denormal(False)


@pytest.mark.parametrize("typed", ["true", "false"])
@pytest.mark.parametrize("files", [("train.json",), ("train.json", "evaluate.json"), ("inference.json",)])
def test_flush_denormal_typed_on_the_command_line_is_set_by_initialize(tmp_path, denormals_restored, files, typed):
    torch.set_flush_denormal(typed != "true")
    assert _flushes_denormals() is (typed != "true")
    _parser("va_maskrcnn_lits", files, tmp_path, flush_denormal=typed).get_parsed_content("initialize")
    assert _flushes_denormals() is (typed == "true")
