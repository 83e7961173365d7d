"""ONNX Runtime vs PyTorch eager: CPU inference time of each bundle's exported network at the CPU demo sizes.

    PYTHONPATH=. .venv/bin/python benchmarks/onnx_benchmark.py            # the demo sizes, 1 thread each
    PYTHONPATH=. .venv/bin/python benchmarks/onnx_benchmark.py --quick    # tiny sizes, a few seconds

Each bundle's ``network_def`` (inference.json with the overrides of its CPU demo job, random weights) is exported with
the command docs/onnx.md gives (``python -m monai.bundle onnx_export network_def ...`` from the bundle's folder,
:func:`export_command`), then the same input runs through the eager network (``torch.no_grad``) and through an ONNX
Runtime CPU session, alternately, ``--repeats`` times after one warm-up call each, both on ``--threads`` threads.
Before timing, the two outputs are compared (their largest difference is in the row's note). Rows (``--rows``): ONNX
Runtime time / eager time per bundle (below 1: ONNX Runtime is faster), for the report only (issue 24 sets no goal).

Inputs (what each exported graph takes, docs/onnx.md): msan_kits a batch of ``sw_batch_size`` = 2 patches of
64 x 64 x 16 voxels (its demo's sliding window); va_maskrcnn_lits one bag of 3 images (9 slices) of 128 px;
cs_att_deeplesion one sample of M = 3 images (9 slices) of 192 px.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.measure import ratios, repeat_timed, require_quiet, row, write_rows  # noqa: E402

OPSET = 17  # torchvision's RoiAlign with aligned=True (3DCE's position-sensitive pooling) needs opset 16 or later
# What each exported graph takes and gives: input and output names, axes that may change after the export.
GRAPHS = {
    "msan_kits": {
        "input_names": ["image"],
        "output_names": ["pred"],
        "dynamic_axes": {"image": {0: "batch", 2: "x", 3: "y", 4: "z"}, "pred": {0: "batch", 2: "x", 3: "y", 4: "z"}},
    },
    "va_maskrcnn_lits": {
        "input_names": ["image"],
        "output_names": ["pred", "boxes", "labels", "scores", "masks"],
        "dynamic_axes": {"image": {2: "height", 3: "width"}},
    },
    "cs_att_deeplesion": {
        "input_names": ["image"],
        "output_names": ["pred"],
        "dynamic_axes": {"image": {2: "height", 3: "width"}},
    },
}
# The CPU demo jobs' networks (scripts/*_job.sh, scripts/va_maskrcnn_lits_demo_args.json) and their inputs.
DEMO = {
    "msan_kits": ({"network_def#channels": [8, 16, 32, 64], "network_def#norm": "instance"}, [2, 1, 64, 64, 16]),
    "va_maskrcnn_lits": (
        {
            "image_size": 128,
            "bag_size": 3,
            "backbone": "resnet18",
            "fpn_channels": 64,
            "frozen_batchnorm": False,
            "proposals_test": 100,
            "detections_per_image": 20,
            "anchor_sizes": [4, 8, 16, 32, 64],
        },
        [1, 9, 128, 128],
    ),
    "cs_att_deeplesion": (
        {
            "max_size": 192,
            "backbone": "resnet18",
            "num_images": 3,
            "image_mean": [0, 0, 0],
            "image_std": [1, 1, 1],
            "network_def#anchor_sizes": [8, 12, 16, 24, 48],
        },
        [1, 9, 192, 192],
    ),
}
QUICK = {
    "msan_kits": ({"network_def#channels": [4, 8, 16, 32]}, [1, 1, 32, 32, 8]),
    "va_maskrcnn_lits": (
        {
            "image_size": 64,
            "bag_size": 3,
            "backbone": "resnet18",
            "fpn_channels": 32,
            "frozen_batchnorm": False,
            "proposals_test": 50,
            "detections_per_image": 5,
        },
        [1, 9, 64, 64],
    ),
    "cs_att_deeplesion": ({"max_size": 64, "backbone": "tiny", "num_images": 3}, [1, 9, 64, 64]),
}


def converter_kwargs(bundle: str) -> dict:
    """``--converter_kwargs`` of the export: torch.onnx's TorchScript-based exporter (``dynamo=False``: it traces the
    torchvision detectors, which torch.export cannot take), opset :data:`OPSET`, the names and axes of
    :data:`GRAPHS`."""
    return {"dynamo": False, "opset_version": OPSET, **GRAPHS[bundle]}


def export_command(
    bundle: str,
    filepath: str | Path,
    ckpt_file: str | Path,
    input_shape: Sequence[int],
    overrides: dict | None = None,
    config_files: Sequence[str] = ("inference.json",),
) -> list[str]:
    """The argv of docs/onnx.md's export command, run from ``bundles/<bundle>``: ``python -m monai.bundle
    onnx_export network_def`` of ``config_files`` (in ``configs/``) with ``overrides`` (config ids, JSON values)."""
    configs = [f"configs/{name}" for name in config_files]
    config_file = configs[0] if len(configs) == 1 else repr(configs)
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "network_def", "--filepath", str(filepath)]
    cmd += ["--ckpt_file", str(ckpt_file), "--meta_file", "configs/metadata.json", "--config_file", config_file]
    cmd += ["--use_trace", "True", "--input_shape", json.dumps(list(input_shape))]
    cmd += ["--converter_kwargs", repr(converter_kwargs(bundle))]  # a Python literal: fire reads False, not "false"
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", json.dumps(value)]
    return cmd


def export(bundle: str, filepath: Path, ckpt_file: Path, input_shape: Sequence[int], overrides=None, config_files=None):
    """Run :func:`export_command` (the user's command) from the bundle's folder; stop with its output if it fails."""
    cmd = export_command(bundle, filepath, ckpt_file, input_shape, overrides, config_files or ("inference.json",))
    result = subprocess.run(cmd, cwd=REPO / "bundles" / bundle, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not Path(filepath).is_file():
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def network(bundle: str, overrides: dict, config_files: Sequence[str] = ("inference.json",), seed: int = 0):
    """``network_def`` of the bundle's configs with ``overrides``, random weights from ``seed``, in eval mode."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / name) for name in config_files])
    for key, value in overrides.items():
        parser[key] = value
    torch.manual_seed(seed)
    return parser.get_parsed_content("network_def").eval()


def session(path: Path, threads: int):
    """An ONNX Runtime CPU session of the graph at PATH on THREADS threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def eager_outputs(bundle: str, net, x: torch.Tensor) -> list[np.ndarray]:
    """The eager network's outputs for the batched tensor X as the exported graph lists them: its output, then
    (VA Mask R-CNN) the detections of the one bag by name."""
    with torch.no_grad():
        outputs = [net(x).numpy()]
        names = GRAPHS[bundle]["output_names"][1:]
        if names:
            (found,) = net(list(x))
            outputs += [found[name].numpy() for name in names]
    return outputs


def largest_difference(expected: Sequence[np.ndarray], found: Sequence[np.ndarray]) -> float:
    """Largest absolute difference over all outputs (inf when their number or a shape differs, e.g. another number
    of detections)."""
    if len(expected) != len(found) or any(e.shape != f.shape for e, f in zip(expected, found)):
        return float("inf")
    return max(float(np.abs(e.astype(np.float64) - f).max(initial=0.0)) for e, f in zip(expected, found))


def onnx_row(bundle: str, ort_seconds: Sequence[float], eager_seconds: Sequence[float], shape, difference, threads):
    """The suite's row: ONNX Runtime time / eager time (each ORT repeat over each eager repeat), no goal."""
    eager_ms = 1000 * float(np.median(eager_seconds))
    ort_ms = 1000 * float(np.median(ort_seconds))
    note = (
        f"input {list(shape)}, {threads} thread(s): eager {eager_ms:.1f} ms, ONNX Runtime {ort_ms:.1f} ms (medians); "
        f"outputs' largest difference {difference:.2g}"
    )
    what = f"{bundle}: ONNX Runtime / PyTorch eager CPU inference time"
    return row(what, ratios(ort_seconds, eager_seconds), "report only (issue 24: no goal)", "-", note)


def measure(bundle: str, quick: bool, repeats: int, threads: int, work: Path) -> dict:
    """Export BUNDLE's demo network, check the graph's output against the eager one, time both; its row."""
    overrides, shape = (QUICK if quick else DEMO)[bundle]
    net = network(bundle, overrides)
    torch.save(net.state_dict(), work / f"{bundle}.pt")
    export(bundle, work / f"{bundle}.onnx", work / f"{bundle}.pt", shape, overrides)
    torch.set_num_threads(threads)
    sess = session(work / f"{bundle}.onnx", threads)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    feed = {"image": x.numpy()}
    difference = largest_difference(eager_outputs(bundle, net, x), sess.run(None, feed))

    def eager():
        with torch.no_grad():
            net(x)

    eager_seconds, ort_seconds = [], []
    for _ in range(repeats):  # alternately, so that a change of machine load meets both
        eager_seconds += repeat_timed(eager, 1, warmup=0 if eager_seconds else 1)
        ort_seconds += repeat_timed(lambda: sess.run(None, feed), 1, warmup=0 if ort_seconds else 1)
    return onnx_row(bundle, ort_seconds, eager_seconds, shape, difference, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny networks and inputs (a test run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls of each (default 10, quick 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads of torch and of ONNX Runtime")
    parser.add_argument("--only", nargs="+", choices=list(GRAPHS), default=list(GRAPHS), metavar="BUNDLE")
    parser.add_argument("--max_load", type=float, default=1.0, help="refuse to run above this 1-minute load average")
    parser.add_argument("--rows", default=None, help="write the rows (JSON) here, for python -m benchmarks")
    args = parser.parse_args()
    require_quiet("onnx_benchmark", args.max_load)
    repeats = args.repeats or (2 if args.quick else 10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bundle in args.only:
            rows.append(measure(bundle, args.quick, repeats, args.threads, Path(tmp)))
            print(f"{rows[-1]['what']}: {rows[-1]['ratio']:.3g} {rows[-1]['spread']} ({rows[-1]['note']})", flush=True)
    write_rows(args.rows, rows)


if __name__ == "__main__":
    main()
