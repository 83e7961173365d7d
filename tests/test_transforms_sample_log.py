"""LogSampled: one log line per sample that passes, named by file or keys, parsed back by loaded_samples."""

import logging

import torch
from monai.data import CacheDataset, MetaTensor
from monai.transforms import Compose, Lambdad

from shared.transforms.sample_log import LogSampled, loaded_samples


def test_logs_rank_tag_and_name_and_returns_the_sample(caplog, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    image = MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/data/case_7/imaging.nii.gz"})
    sample = {"image": image, "case": "volume-2", "slice": 5}
    with caplog.at_level(logging.INFO, logger="shared.sample_log"):
        assert LogSampled("image")(sample) is sample
        LogSampled(["case", "slice"], tag="validation")(sample)
    assert loaded_samples(caplog.text) == {3: ["/data/case_7/imaging.nii.gz"]}
    assert loaded_samples(caplog.text, tag="validation") == {3: ["volume-2:5"]}


def test_a_cache_dataset_logs_each_draw_not_once_at_caching(caplog, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    transform = Compose([Lambdad("x", lambda x: x + 1), LogSampled("x")])
    dataset = CacheDataset([{"x": 0}, {"x": 10}], transform=transform, progress=False)
    with caplog.at_level(logging.INFO, logger="shared.sample_log"):
        caplog.clear()
        values = [dataset[i]["x"] for i in (1, 1, 0)]
    assert values == [11, 11, 1]  # the deterministic part was cached and applied once
    assert loaded_samples(caplog.text) == {0: ["11", "11", "1"]}
