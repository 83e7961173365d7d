"""benchmarks/va_slice_attention.py: the tables of a finished VA ablation's block measurements: mean +- sd over
seeds of each level's figures, the switched-off attention's rows absent, one training window per epoch."""

from benchmarks.va_slice_attention import gate_rows, slice_rows


def _levels(entropy: float, alive: float) -> dict:
    return {
        "0": {
            "spatial_entropy": entropy,
            "spatial_max_weight": 0.5,
            "spatial_target_weight": 0.25,
            "spatial_far_weight": 0.5,
            "uniform_far_weight": 0.667,
            "channel_hidden_alive": alive,
            "norm_ratio": 1.0,
        }
    }


RUNS = [
    {"arm": "baseline", "seed": 0},  # no VA blocks: nothing watched
    {
        "arm": "spatial",
        "seed": 0,
        "evaluation_watch": {"levels": _levels(1.0, 0.25)},
        "training_watch": {"epochs": [{"epoch": 1, "levels": _levels(2.0, 0.5)}]},
    },
    {"arm": "spatial", "seed": 1, "evaluation_watch": {"levels": _levels(2.0, 0.75)}},
]


def test_slice_rows_average_over_seeds_and_skip_absent_attentions():
    (row,) = slice_rows(RUNS, "spatial")  # no channel figures: one row, the spatial attention's
    assert row[:3] == ["spatial", "0", "spatial"]
    assert row[3] == "1.500 +- 0.707"  # entropies 1 and 2: sample sd sqrt(0.5)
    assert row[4:7] == ["0.500 +- 0.000", "0.250 +- 0.000", "0.500 +- 0.000"]
    assert row[7] == "0.667"
    assert slice_rows(RUNS, "baseline") == []


def test_gate_rows_held_out_and_per_epoch():
    (held_out,) = gate_rows(RUNS, "spatial")
    assert held_out[:3] == ["spatial", "evaluation", "0"]
    assert held_out[3] == "0.500 +- 0.354"  # hidden units alive 0.25 and 0.75
    assert held_out[4:8] == ["-", "-", "-", "-"]  # figures the runs did not record
    (epoch,) = gate_rows(RUNS, "spatial", "epoch 1")
    assert epoch[3] == "0.500 +- 0.000" and epoch[-1] == "1.000 +- 0.000"
