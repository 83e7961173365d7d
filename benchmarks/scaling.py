"""How whole-volume inference cost grows with the volume: time and peak memory of each bundle's own network and
inferer (parsed from its inference.json) at several volume depths and slice sizes, each measurement in a process of
its own, with the growth fitted over the depths.

    PYTHONPATH=. .venv/bin/python benchmarks/scaling.py                     # CPU: 32/64/128 slices of 64 and 128 px
    PYTHONPATH=. .venv/bin/python benchmarks/scaling.py --device cuda --sizes 512 --paper_networks   # on a GPU

What runs is inference.json's ``network`` and ``inferer`` (no reading, preprocessing or writing) on a random volume
as the inferer takes it: msan_kits and va_maskrcnn_lits a (1, 1, S, S, D) volume in [0, 1] (MSAN's sliding window
is S x S x 4, the paper's whole-slice slabs; VA's images are S px), cs_att_deeplesion a HU volume with 0.8 mm pixels
(its ``spacing_mm``, so the S px slices are not rescaled) and 2 mm slices (its context interval). Weights are random
(inference.json loads no pretrained weights). On a CPU the networks are made smaller through config ids the bundles
expose (:data:`CPU_NETWORKS`, printed); ``--paper_networks`` keeps the configs' defaults.

Per process: a warm-up call on the volume's first slices (libraries' lazy set-up), then ``--repeats`` timed
whole-volume calls, then one more whose peak memory is taken: CUDA max allocated, or on CPU the peak resident set over
the resident set before the call (see :func:`reset_peak`). The network and the input volume are not counted, the
output is (on CUDA MSAN stitches its windows on the CPU, so there only the windows' memory counts). Rows (``--rows``):
time per slice and memory at the largest vs the smallest depth, with the power-law fit over all depths in the note.
The 2.5D detectors' feature cache holds one bag of images, so their memory should grow with depth only by the
volume-sized arrays (their row: memory added per slice, in float32 slices); MSAN's sliding window keeps the whole
volume's class probabilities (its row: memory at the largest vs the smallest depth). The limit of the
time row is the ratio of the work per slice (sliding windows or backbone images run; the detectors' heads run once a
slice whatever the cache does).
"""

import argparse
import ctypes
import gc
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu_check import bundle_parser  # noqa: E402
from benchmarks.measure import peak_mib, repeat_timed, require_quiet, row, rss_mib, run_child, write_rows  # noqa: E402

BUNDLES = ("msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion")
TWO_AND_A_HALF_D = ("va_maskrcnn_lits", "cs_att_deeplesion")
# Smaller networks for a CPU, through ids each bundle's inference.json exposes (the defaults are the papers').
CPU_NETWORKS = {
    "msan_kits": {"network_def#channels": [8, 16, 32, 64], "sw_batch_size": 2},
    "va_maskrcnn_lits": {"backbone": "resnet18", "proposals_test": 50, "detections_per_image": 2},
    "cs_att_deeplesion": {
        "backbone": "resnet18",
        "network_def#rpn_pre_nms_top_n_test": 1000,
        "network_def#rpn_post_nms_top_n_test": 50,
    },
}
PIXEL_MM, SLICE_MM = 0.8, 2.0  # cs_att_deeplesion's input: its spacing_mm and its context interval
WARMUP_SLICES = 4
M_MMAP_THRESHOLD, MMAP_FROM_BYTES = -3, 64 * 1024  # glibc mallopt: blocks of 64 KiB or more by mmap


def size_overrides(bundle: str, size: int) -> dict:
    """The config ids that set a bundle's slice size to SIZE px."""
    return {
        "msan_kits": {"patch_size": [size, size, 4]},
        "va_maskrcnn_lits": {"image_size": size},
        "cs_att_deeplesion": {"max_size": size},
    }[bundle]


def overrides(bundle: str, size: int, paper_networks: bool) -> dict:
    """Every config id this benchmark sets for BUNDLE at SIZE px."""
    return {**({} if paper_networks else CPU_NETWORKS[bundle]), **size_overrides(bundle, size)}


def volume(bundle: str, size: int, depth: int, device: torch.device) -> torch.Tensor:
    """A random volume of DEPTH slices of SIZE x SIZE px in the form the bundle's inferer takes."""
    gen = torch.Generator().manual_seed(0)
    if bundle != "cs_att_deeplesion":
        return torch.rand(1, 1, size, size, depth, generator=gen).to(device)
    from monai.data import MetaTensor

    hu = torch.rand(1, 1, size, size, depth, generator=gen) * 1400 - 1000  # air to bone
    return MetaTensor(hu, affine=torch.diag(torch.tensor([PIXEL_MM, PIXEL_MM, SLICE_MM, 1.0], dtype=torch.float64)))


def reset_peak(device: torch.device) -> float:
    """Start a new peak-memory window; the memory in use now (MiB), which :func:`measure.peak_mib` is compared to.

    On CPU the kernel's resident-set high-water mark (``ru_maxrss``) is reset through /proc/self/clear_refs, so a
    peak from building the network does not hide the inference's peak; and glibc is told to give freed memory back
    and to serve blocks of 64 KiB or more by mmap from now on, so that the resident set follows the memory in use
    (freed blocks kept by malloc would otherwise be reused unseen).
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_FROM_BYTES)
    libc.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mib()


def measure_one(bundle: str, size: int, depth: int, args: argparse.Namespace) -> dict:
    """In this process: a warm-up on the volume's first slices, the times of ``args.repeats`` whole-volume calls,
    then the peak memory of one more, and the work of a call (sliding windows or backbone images run)."""
    from monai.networks.utils import eval_mode

    from shared.engines.flags import as_bool
    from shared.engines.precision import autocast

    device = torch.device(args.device)
    torch.manual_seed(0)
    parser = bundle_parser(bundle, "inference.json", overrides(bundle, size, args.paper_networks), device=device)
    parser.get_parsed_content("set_tf32")
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    amp = as_bool(parser.get_parsed_content("amp"), "amp") and device.type == "cuda"
    inputs = volume(bundle, size, depth, device)
    windows = []
    network.register_forward_pre_hook(lambda module, x: windows.append(x[0].shape[0]))  # MSAN: one call per batch

    def infer(slices: int = depth) -> None:
        with eval_mode(network), autocast(device, amp), torch.no_grad():
            inferer(inputs[..., :slices], network)

    infer(WARMUP_SLICES)  # libraries' lazy set-up (code pages, thread pools) stays out of time and memory
    times = repeat_timed(infer, args.repeats, warmup=0, device=args.device)
    windows.clear()
    before = reset_peak(device)
    infer()
    peak = peak_mib(device) - before
    work = {
        "msan_kits": lambda: sum(windows),
        "va_maskrcnn_lits": lambda: inferer.images_computed,
        "cs_att_deeplesion": lambda: inferer.inferer.stats["images_computed"],
    }[bundle]()
    return {"seconds": times, "peak_mib": peak, "work": work, "volume_mib": inputs.numel() * 4 / 2**20, "amp": amp}


def growth_exponent(depths, values) -> float:
    """k of the least-squares fit values ~ c * depth^k (1: linear, 0: flat)."""
    return float(np.polyfit(np.log(depths), np.log(values), 1)[0])


def fitted_ratio(depths, values) -> float:
    """The fitted growth from the smallest to the largest depth: (max depth / min depth) ^ k."""
    return (max(depths) / min(depths)) ** growth_exponent(depths, values)


def cross_ratios(high, low) -> list[float]:
    """Every ratio of a value of HIGH to a value of LOW: their median is about the ratio of the medians, and their
    range the ratio's spread."""
    return [h / lo for h in high for lo in low]


def scaling_rows(records: dict) -> list[dict]:
    """The suite's rows: time per slice and memory at the largest vs the smallest depth, per bundle and slice size.

    ``records[bundle][size][depth]`` is :func:`measure_one`'s result.
    """
    rows = []
    for bundle, by_size in records.items():
        for size, by_depth in by_size.items():
            depths = sorted(by_depth)
            low, high = depths[0], depths[-1]
            per_slice = [np.median(by_depth[d]["seconds"]) / d for d in depths]
            memory = [by_depth[d]["peak_mib"] for d in depths]
            work = [by_depth[d]["work"] / d for d in depths]
            fit = f"fit over {depths} slices: time per slice ~ depth^{growth_exponent(depths, per_slice):.2f}"
            rows.append(
                row(
                    f"{bundle} time/slice at {high} vs {low} slices ({size} px)",
                    cross_ratios(
                        [t / high for t in by_depth[high]["seconds"]], [t / low for t in by_depth[low]["seconds"]]
                    ),
                    goal="~1.0 (flat)",
                    limit=f"{work[-1] / work[0]:.2f} (work per slice)",
                    note=f"{fit}; median {per_slice[0]:.3g} s/slice at {low}",
                )
            )
            note = f"memory ~ depth^{growth_exponent(depths, memory):.2f}; {memory[0]:.0f} -> {memory[-1]:.0f} MiB"
            if bundle in TWO_AND_A_HALF_D:  # the volume-sized arrays grow with depth; anything else must not
                slice_mib = by_depth[high]["volume_mib"] / high
                rows.append(
                    row(
                        f"{bundle} memory added per slice, in float32 slices ({size} px)",
                        [(memory[-1] - memory[0]) / (high - low) / slice_mib],
                        goal="<= 4 (volume-sized arrays only: no per-slice features or masks kept)",
                        limit="2 (the input's slice-first copy and the output label volume)",
                        note=f"{note} from {low} to {high} slices; one float32 slice is {slice_mib * 1024:.0f} KiB",
                    )
                )
            else:
                rows.append(
                    row(
                        f"{bundle} memory at {high} vs {low} slices ({size} px)",
                        [memory[-1] / memory[0]],
                        goal="report (sliding window)",
                        limit="n/a: the whole volume's class probabilities are held",
                        note=f"{note}; one float32 volume is {by_depth[high]['volume_mib']:.1f} MiB at {high} slices",
                    )
                )
    return rows


def save_plot(records: dict, out: Path) -> Path:
    """Time and peak memory against depth, one column per bundle, one line per slice size (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.data.atomic import atomic_path

    fig, axes = plt.subplots(2, len(records), figsize=(4 * len(records), 6.5), squeeze=False)
    for col, (bundle, by_size) in enumerate(records.items()):
        for size, by_depth in by_size.items():
            depths = sorted(by_depth)
            times = [by_depth[d]["seconds"] for d in depths]
            median = [np.median(t) for t in times]
            spread = [[m - min(t) for m, t in zip(median, times)], [max(t) - m for m, t in zip(median, times)]]
            axes[0, col].errorbar(depths, median, yerr=spread, marker="o", capsize=3, label=f"{size} px")
            axes[1, col].plot(depths, [by_depth[d]["peak_mib"] for d in depths], marker="o", label=f"{size} px")
        axes[0, col].set_title(bundle)
        axes[0, col].set_ylabel("inference s (median, min-max)")
        axes[1, col].set_ylabel("peak memory MiB")
        for ax in axes[:, col]:
            ax.set_xlabel("slices")
            ax.set_xticks(depths)
            ax.set_ylim(bottom=0)
            ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", choices=BUNDLES, default=list(BUNDLES))
    parser.add_argument("--depths", type=int, nargs="+", default=[32, 64, 128], help="volume depths (slices)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="slice sizes (px; papers: 512-1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed whole-volume calls after the first")
    parser.add_argument("--paper_networks", action="store_true", help="the configs' networks (for a GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (depths 4 8, 32 px, 1 repeat)")
    parser.add_argument("--rows", help="write the suite's rows here (JSON)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "scaling.png", help="PNG")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--max_load", type=float, default=1.0, help="refuse to start above this 1-minute load average")
    parser.add_argument("--one", nargs=3, metavar=("BUNDLE", "SIZE", "DEPTH"), help=argparse.SUPPRESS)  # child
    args = parser.parse_args()
    if args.quick:
        args.depths, args.sizes, args.repeats = [4, 8], [32], 1
    if args.one:
        bundle, size, depth = args.one
        print(json.dumps(measure_one(bundle, int(size), int(depth), args)))
        return
    load = require_quiet("scaling", args.max_load)
    print(
        f"scaling: device {args.device}, {torch.get_num_threads()} threads, load {load:.2f}, depths {args.depths}, "
        f"sizes {args.sizes} px, {args.repeats} timed calls after the first, each (bundle, size, depth) in a process"
    )
    settings = ["--repeats", str(args.repeats), "--device", args.device] + ["--paper_networks"] * args.paper_networks
    records = {}
    for bundle in args.bundles:
        print(f"{bundle}: config overrides {overrides(bundle, args.sizes[0], args.paper_networks)} (size per run)")
        records[bundle] = {}
        for size in args.sizes:
            records[bundle][size] = {}
            for depth in args.depths:
                child = [sys.executable, __file__, *settings, "--one", bundle, str(size), str(depth)]
                result = run_child(child)
                records[bundle][size][depth] = result
                print(
                    f"  {size} px x {depth} slices: {np.median(result['seconds']):.2f} s, "
                    f"{result['peak_mib']:.0f} MiB, work {result['work']}",
                    flush=True,
                )
    rows = scaling_rows(records)
    for r in rows:
        print(f"| {r['what']} | {r['ratio']:.2f} ({r['spread'][0]:.2f}-{r['spread'][1]:.2f}) | {r['goal']} |")
    print(f"plot: {save_plot(records, args.out)}")
    write_rows(args.rows, rows)
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args), "records": records}, default=str))


if __name__ == "__main__":
    main()
