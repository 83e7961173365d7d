"""Charts of runs, ablations and evaluations (`python -m shared show curves|ablation|cases`) and the jobs' closing
summary (`python -m shared summary`): each reads back exactly what a hand-made input holds."""

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared import visualize
from shared.engines.reports.summary import headline_metrics, job_summary
from shared.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "shared", *map(str, args)], capture_output=True, text=True, cwd=REPO_ROOT, env=env
    )


def _write_run(folder: Path, iterations: int = 12, per_epoch: int = 4, metric_tag: str = "val_lesion_dice", terms=()):
    """A run as the bundles' train.json writes it: the trainer's handler logs train_loss every iteration (or, for a
    detector's loss dict, `loss` and one tag per term) and the validator's handler (its own writer, its own file) logs
    the metric after each epoch with the epoch as step."""
    from torch.utils.tensorboard import SummaryWriter

    trainer, validator = SummaryWriter(str(folder)), SummaryWriter(str(folder))
    losses, metric = {}, {}
    for iteration in range(1, iterations + 1):
        losses[iteration] = 1.0 / iteration
        if terms:
            trainer.add_scalar("loss", losses[iteration], iteration)
            for i, term in enumerate(terms):
                trainer.add_scalar(term, losses[iteration] / (i + 2), iteration)
        else:
            trainer.add_scalar("train_loss", losses[iteration], iteration)
        trainer.flush()
        if iteration % per_epoch == 0:
            time.sleep(0.02)  # the validation runs after the epoch's last iteration
            epoch = iteration // per_epoch
            metric[iteration] = 0.25 * epoch
            validator.add_scalar(metric_tag, metric[iteration], epoch)
            validator.flush()
            time.sleep(0.02)
    trainer.close()
    validator.close()
    return losses, metric


def test_curves_read_the_steps_and_values_written_and_place_validations_at_their_epoch_end(tmp_path):
    losses, _ = _write_run(tmp_path)
    loss, metrics = visualize.training_curves(tmp_path)
    assert list(loss) == ["train_loss"] and visualize.main_loss_tag(loss) == "train_loss"
    assert [s for s, _ in loss["train_loss"]] == list(range(1, 13))
    np.testing.assert_allclose([v for _, v in loss["train_loss"]], [losses[s] for s in range(1, 13)], rtol=1e-6)
    assert list(metrics) == ["val_lesion_dice"]
    # epochs 1, 2, 3 of 4 iterations -> iterations 4, 8, 12
    assert [s for s, _ in metrics["val_lesion_dice"]] == [4, 8, 12]
    np.testing.assert_allclose([v for _, v in metrics["val_lesion_dice"]], [0.25, 0.5, 0.75])


def test_curves_of_a_detector_loss_dict_keep_every_term_and_the_total_is_the_main_loss(tmp_path):
    """va_maskrcnn_lits's trainer output is a dict: TensorBoardStatsHandler writes `loss` and each term as its tag."""
    _write_run(tmp_path, iterations=6, per_epoch=3, terms=("loss_classifier", "loss_mask"))
    loss, metrics = visualize.training_curves(tmp_path)
    assert sorted(loss) == ["loss", "loss_classifier", "loss_mask"] and visualize.main_loss_tag(loss) == "loss"
    np.testing.assert_allclose([v for _, v in loss["loss_mask"]], [1 / (3 * i) for i in range(1, 7)], rtol=1e-6)
    assert metrics == {"val_lesion_dice": [(3, 0.25), (6, 0.5)]}


def test_show_curves_writes_the_default_png_into_the_run_folder(tmp_path):
    _write_run(tmp_path, iterations=8, metric_tag="val_kits19_dice")
    done = _cli("show", "curves", tmp_path)
    assert done.returncode == 0, done.stderr
    png = tmp_path / "training_curves.png"
    assert done.stdout.strip() == f"wrote {png}"
    assert Image.open(png).size == (1100, 420) and png.stat().st_size < 300_000


def test_curves_of_a_folder_without_event_files_or_no_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("no events here")
    with pytest.raises(InputError, match="no TensorBoard event files"):
        visualize.training_curves(tmp_path)
    for folder, words in ((tmp_path, "no TensorBoard event files"), (tmp_path / "missing", "no such folder")):
        done = _cli("show", "curves", folder, tmp_path / "out.png")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr
        assert lines[0].startswith("python -m shared show: ") and str(folder) in lines[0] and words in lines[0]
    assert not (tmp_path / "out.png").exists()


def _ablation(tmp_path: Path) -> Path:
    """One arm of each row shape benchmarks/*_ablation.py writes: scalar and list means (va, csatt) and msan's texts."""
    path = tmp_path / "ablation.json"
    rows = [
        {"arm": "baseline", "model": "Baseline", "dice_mean": 0.141, "dice_sd": 0.037, "sens_mean": [0.1, 0.3],
         "sens_sd": [0.01, 0.03], "kidney": "0.763 +- 0.239"},
        {"arm": "full", "model": "Full", "dice_mean": 0.119, "dice_sd": 0.022, "sens_mean": [0.2, 0.4],
         "sens_sd": [0.02, 0.04], "kidney": "0.918 +- 0.013"},
    ]  # fmt: skip
    path.write_text(json.dumps({"settings": {"fp_rates": [0.5, 4.0]}, "table": rows, "runs": []}))
    return path


def test_ablation_reads_means_and_sds_of_every_row_shape(tmp_path):
    arms, values = visualize.read_ablation(_ablation(tmp_path))
    assert arms == ["Baseline", "Full"]
    assert list(values) == ["dice", "sens@0.5", "sens@4", "kidney"]
    assert values["dice"] == ([0.141, 0.119], [0.037, 0.022])
    assert values["sens@4"] == ([0.3, 0.4], [0.03, 0.04])
    assert values["kidney"] == ([0.763, 0.918], [0.239, 0.013])
    arms, chosen = visualize.read_ablation(_ablation(tmp_path), ["kidney", "dice"])
    assert list(chosen) == ["kidney", "dice"]


def test_ablation_leaves_out_a_metric_the_run_did_not_measure(tmp_path):
    """csatt_ablation on plain phantoms has no look-alikes: their mean and sd are None."""
    path = tmp_path / "plain.json"
    rows = [{"model": "3DCE", "sens_mean": [0.1], "sens_sd": [0.01], "lookalikes_mean": None, "lookalikes_sd": None}]
    path.write_text(json.dumps({"settings": {"fp_rates": [0.5]}, "table": rows}))
    arms, values = visualize.read_ablation(path)
    assert arms == ["3DCE"] and values == {"sens@0.5": ([0.1], [0.01])}
    with pytest.raises(InputError, match="table row 0 has no lookalikes; its metrics: sens@0.5"):
        visualize.read_ablation(path, ["lookalikes"])


def test_ablation_refuses_another_json_and_an_unknown_metric_naming_the_file(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(InputError, match=f'{other}: no "table"'):
        visualize.read_ablation(other)
    with pytest.raises(InputError, match="table row 0 has no lesion; its metrics: dice, sens@0.5"):
        visualize.read_ablation(_ablation(tmp_path), ["lesion"])
    done = _cli("show", "ablation", other, tmp_path / "out.png")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and str(other) in done.stderr


def test_show_ablation_draws_one_bar_per_arm_and_metric(tmp_path):
    done = _cli("show", "ablation", _ablation(tmp_path), tmp_path / "bars.png", "--metrics", "dice,sens@4")
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "bars.png").size == (900, 450)


def _cases_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


KITS_ROWS = [
    {"case": "case_00180", "kidney_dice": 0.9, "tumour_dice": 0.5, "mean_dice": 0.7},
    {"case": "case_00181", "kidney_dice": 0.8, "tumour_dice": 0.1, "mean_dice": 0.45},
]
LITS_ROWS = [
    {"case": "volume-3", "lesion_dice": 0.6, "liver_dice": 0.95, "lesions_small": 1},
    {"case": "volume-7", "lesion_dice": "", "liver_dice": 0.93, "lesions_small": 0},  # undefined Dice: empty
    {"case": "volume-9", "lesion_dice": 0.3, "liver_dice": 0.97, "lesions_small": 2},
]


def test_cases_read_the_dice_columns_of_both_segmentation_csvs(tmp_path):
    cases, values = visualize.read_case_dice(_cases_csv(tmp_path / "kits19_metrics.csv", KITS_ROWS))
    assert cases == ["case_00180", "case_00181"] and values == {"kidney_dice": [0.9, 0.8], "tumour_dice": [0.5, 0.1]}
    cases, values = visualize.read_case_dice(_cases_csv(tmp_path / "lits_metrics.csv", LITS_ROWS))
    assert cases == ["volume-3", "volume-7", "volume-9"] and values["liver_dice"] == [0.95, 0.93, 0.97]
    assert values["lesion_dice"][0] == 0.6 and math.isnan(values["lesion_dice"][1])
    done = _cli("show", "cases", tmp_path / "lits_metrics.csv", tmp_path / "cases.png")
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "cases.png").size == (900, 420)


def test_cases_refuse_a_csv_without_dice_columns(tmp_path):
    path = _cases_csv(tmp_path / "sensitivity.csv", [{"series": "a", "lesions": 2}])
    with pytest.raises(InputError, match="no per-case rows with a 'case' and '\\*_dice' columns"):
        visualize.read_case_dice(path)


def _deeplesion_summary(folder: Path, sens4: float, images: int = 290) -> None:
    folder.mkdir()
    rates = {"sens@0.5": 0.374, "sens@1": 0.515, "sens@2": 0.616, "sens@4": sens4, "sens@8": 0.723, "sens@16": None}
    (folder / "summary.json").write_text(json.dumps({"images": images, "lesions": 755, **rates, "ap50": 0.478}))


def test_headlines_are_the_means_over_cases_worked_out_by_hand(tmp_path):
    (tmp_path / "eval").mkdir()
    _cases_csv(tmp_path / "eval" / "kits19_metrics.csv", KITS_ROWS)
    path, values, scored = headline_metrics("kits19", tmp_path / "eval")
    assert path == tmp_path / "eval" / "kits19_metrics.csv" and scored == "2 cases, mean over cases"
    assert values == pytest.approx({"kidney Dice per case": 0.85, "tumour Dice per case": 0.3})
    _cases_csv(tmp_path / "eval" / "lits_metrics.csv", LITS_ROWS)
    _, values, _ = headline_metrics("lits", tmp_path / "eval")
    # liver (0.95 + 0.93 + 0.97) / 3; lesion: the empty cell left out, (0.6 + 0.3) / 2
    assert values == pytest.approx({"liver Dice per case": 0.95, "lesion Dice per case": 0.45})


def test_summary_puts_untrained_beside_trained_then_time_and_paths(tmp_path):
    for name, rows in (("eval", KITS_ROWS), ("eval_untrained", [{**r, "kidney_dice": 0.0} for r in KITS_ROWS])):
        (tmp_path / name).mkdir()
        _cases_csv(tmp_path / name / "kits19_metrics.csv", rows)
    (tmp_path / "eval" / "overlay.png").write_bytes(b"png")
    curves = tmp_path / "training_curves.png"
    text = job_summary(
        "kits19", tmp_path / "eval", tmp_path / "eval_untrained", 396, tmp_path / "predictions", [curves], "msan_kits"
    )
    assert text.splitlines() == [
        "== msan_kits job summary (kits19: 2 cases, mean over cases)",
        "metric                untrained    trained",
        "kidney Dice per case      0.000      0.850",
        "tumour Dice per case      0.300      0.300",
        "time: 396 s (6 min 36 s) after the environment setup",
        f"metrics: {tmp_path / 'eval' / 'kits19_metrics.csv'}, {tmp_path / 'eval_untrained' / 'kits19_metrics.csv'}",
        f"pictures: {tmp_path / 'eval' / 'overlay.png'}, {curves} (missing)",
        f"predictions: {tmp_path / 'predictions'}",
    ]


def test_summary_command_of_deeplesion_evaluations(tmp_path):
    _deeplesion_summary(tmp_path / "eval", 0.686)
    _deeplesion_summary(tmp_path / "eval_untrained", 0.001)
    done = _cli(
        "summary", "deeplesion", tmp_path / "eval", tmp_path / "eval_untrained", "--seconds", "738", "--name",
        "cs_att_deeplesion", "--predictions", tmp_path / "eval" / "detections.json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "== cs_att_deeplesion job summary (deeplesion: 290 key slices, 755 lesions)"
    rows = {" ".join(line.split()[:-2]): line.split()[-2:] for line in lines[2:9]}
    assert rows["sensitivity at 4 FPs per image"] == ["0.001", "0.686"]
    assert rows["sensitivity at 16 FPs per image"] == ["n/a", "n/a"] and rows["AP50"] == ["0.478", "0.478"]
    assert lines[1].split() == ["metric", "untrained", "trained"]
    assert lines[-4] == "time: 738 s (12 min 18 s) after the environment setup"
    assert lines[-1].endswith("detections.json")


def test_summary_of_a_missing_evaluation_names_the_file(tmp_path):
    done = _cli("summary", "lits", tmp_path / "eval")
    assert done.returncode == 1 and done.stderr.strip() == (
        f"python -m shared summary: {tmp_path / 'eval' / 'lits_metrics.csv'}: no such file "
        "(the lits evaluation writes it into its output folder)"
    )
