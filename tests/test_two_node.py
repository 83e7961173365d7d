"""Two nodes simulated on one machine: two torchrun launchers (``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on a
free local port) train a bundle over gloo. Each process says which rank and device it took (``join_process_group``)
and which samples it drew (``LogSampled``) in its own node's torchrun log folder.

Also: the handlers a rank other than 0 drops are the same in the three bundles.
"""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from monai.utils import optional_import

from shared.data import deeplesion, kits19
from shared.engines import distributed
from shared.phantoms.deeplesion import make_phantoms as deeplesion_phantoms
from shared.phantoms.kits19 import make_phantoms as kits19_phantoms
from shared.transforms.sample_log import loaded_samples
from tests.conftest import REPO_ROOT
from tests.test_bundle_cs_att_deeplesion import TINY as CS_ATT_TINY
from tests.test_bundle_msan_kits import TINY as MSAN_TINY

BUNDLES = REPO_ROOT / "bundles"
JOINED = re.compile(r"rank (\d+) of (\d+) \(local rank (\d+)\) on (\S+)$", flags=re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_on_two_nodes(bundle: str, overrides: dict, tmp_path: Path) -> dict[int, tuple[str, Path]]:
    """Run ``training`` of train.json + multi_gpu_train.json as node 0 and node 1, each writing into its own folder
    ``tmp_path/node<n>`` (``models``, ``runs``, ``cache``, torchrun's logs) as on machines that share no disk;
    the stdout and node folder of each global rank."""
    files = str([str(BUNDLES / bundle / "configs" / name) for name in ("train.json", "multi_gpu_train.json")])
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = []
    for node in (0, 1):
        folder = tmp_path / f"node{node}"
        own = {"ckpt_dir": folder / "models", "output_dir": folder / "runs"}
        if "cache_dir" in ConfigParser.load_config_file(BUNDLES / bundle / "configs" / "train.json"):
            own["cache_dir"] = folder / "cache"
        args = {**overrides, **own}.items()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        cmd += ["--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", bundle]
        cmd += ["--local_addr", "127.0.0.1", "--redirects", "3", "--log_dir", str(folder / "torchrun")]
        cmd += ["-m", "monai.bundle", "run", "training", "--config_file", files]
        cmd += [a for k, v in args for a in (f"--{k}", json.dumps(v) if isinstance(v, list) else str(v))]
        folder.mkdir()
        with open(folder / "launcher.log", "w") as log:
            nodes.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [proc.wait(timeout=300) for proc in nodes]
    finally:
        for proc in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ranks = {}
    for node in (0, 1):
        folder = tmp_path / f"node{node}"
        logs = list((folder / "torchrun").rglob("stdout.log"))
        text = logs[0].read_text() if len(logs) == 1 else ""
        assert codes[node] == 0 and text, (folder / "launcher.log").read_text()[-3000:] + text[-3000:]
        (rank, world, local_rank, device), *others = JOINED.findall(text)
        assert not others and world == "2", text[-3000:]
        # LOCAL_RANK (0 on both nodes), not the global rank, picks the device: local_device() -> cuda:<LOCAL_RANK>,
        # or the CPU without CUDA, as here
        assert local_rank == "0" and device == "cpu", text[-3000:]
        ranks[int(rank)] = (text, folder)
    assert sorted(ranks) == [0, 1]  # one global rank per node
    return ranks


def _assert_split(ranks: dict[int, tuple[str, Path]], names: list[str]) -> None:
    """The ranks drew disjoint parts of ``names`` (sharing only DistributedSampler's padding) that cover it."""
    loaded = {rank: loaded_samples(text).get(rank, []) for rank, (text, _) in ranks.items()}
    per_rank = math.ceil(len(names) / 2)
    assert len(loaded[0]) == len(loaded[1]) == per_rank
    assert sorted(set(loaded[0]) | set(loaded[1])) == sorted(names)
    assert len(set(loaded[0]) & set(loaded[1])) == 2 * per_rank - len(names)


def _assert_only_rank_zero_writes(ranks: dict[int, tuple[str, Path]], loss_key: str) -> None:
    """Rank 0's node holds the checkpoints and the TensorBoard log and its stdout the losses; rank 1 wrote none."""
    (text0, folder0), (text1, folder1) = ranks[0], ranks[1]
    assert sorted(p.name for p in (folder0 / "models").iterdir()) == ["model.pt", "resume_checkpoint_epoch=1.pt"]
    assert list((folder0 / "runs").rglob("events.out.tfevents.*"))
    assert not [p for sub in ("models", "runs") for p in (folder1 / sub).rglob("*") if p.is_file()]
    assert loss_key in text0 and loss_key not in text1


@pytest.mark.slow
def test_msan_kits_trains_on_two_nodes(tmp_path):
    root = kits19_phantoms(tmp_path / "kits19", num_cases=6, shape=(16, 32, 32))  # 4 training cases
    overrides = {**MSAN_TINY, "dataset_dir": root, "epochs": 1, "val_interval": 1, "batch_size": 1}
    overrides["validate#dataset#data"] = "$@datalist['validation'] + @datalist['test']"  # a case for each rank
    ranks = _train_on_two_nodes("msan_kits", overrides, tmp_path)
    names = [e["image"] for e in kits19.make_datalist(root)["training"]]
    assert len(names) == 4
    _assert_split(ranks, names)
    _assert_only_rank_zero_writes(ranks, "train_loss")


@pytest.mark.slow
def test_cs_att_deeplesion_trains_on_two_nodes(tmp_path):
    root = deeplesion_phantoms(tmp_path / "deeplesion", num_cases=8, seed=0, image_size=64)
    overrides = {**CS_ATT_TINY, "backbone": "tiny", "epochs": 1, "dataset_dir": root}
    ranks = _train_on_two_nodes("cs_att_deeplesion", overrides, tmp_path)
    names = [e["file_name"] for e in deeplesion.make_datalist(root)["training"]]
    assert len(names) == 7  # 4 a rank: 3 of their own and one padding sample drawn twice
    _assert_split(ranks, names)
    _assert_only_rank_zero_writes(ranks, "train_loss")


def _handler_classes(bundle: str) -> list[type]:
    """The classes of the handlers a DDP training run attaches (train, validation, resume), from train.json."""
    config = ConfigParser.load_config_file(BUNDLES / bundle / "configs" / "train.json")
    specs = config["train"]["handlers"] + config["validate"]["handlers"] + config["train"]["resume_handlers"]
    found = []
    for spec in specs:
        module, _, name = spec["_target_"].rpartition(".")
        found.append(optional_import(module or "monai.handlers", name=name)[0])
    return found


def test_the_bundles_drop_the_same_handlers_off_rank_zero(monkeypatch):
    """Under multi_gpu_train.json a rank > 0 keeps the LR schedule, validation and checkpoint loading of every bundle
    and drops its loggers, TensorBoard writers, checkpoint savers (and msan_kits' progress bar, which only it has)."""
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    writers = {"StatsHandler", "TensorBoardStatsHandler", "AtomicCheckpointSaver"}
    for bundle in ("msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion"):
        handlers = [cls.__new__(cls) for cls in _handler_classes(bundle)]  # the real types, nothing attached
        on_rank_one = distributed.handlers_for_rank(handlers)
        assert {type(h).__name__ for h in on_rank_one} == {"LrScheduleHandler", "ValidationHandler", "CheckpointLoader"}
        dropped = {type(h).__name__ for h in handlers if h not in on_rank_one}
        assert dropped == writers | ({"ProgressBar"} if bundle == "msan_kits" else set())

        # and every handler list of the training run goes through handlers_for_rank
        gpu = ConfigParser.load_config_file(BUNDLES / bundle / "configs" / "multi_gpu_train.json")
        assert gpu["rank_handlers"]["_target_"] == "shared.engines.distributed.handlers_for_rank"
        assert gpu["train#trainer#train_handlers"] == "$@rank_handlers(@train#handlers)"
        assert gpu["validate#evaluator#val_handlers"] == "$@rank_handlers(@validate#handlers)"
        for run_id in ("run", "training"):  # msan_kits' train.json has training = %run, the run below
            if run_id in gpu:
                assert gpu[run_id][0] == "$[h.attach(@train#trainer) for h in @rank_handlers(@train#resume_handlers)]"
