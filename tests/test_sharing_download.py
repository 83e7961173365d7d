"""Sharing a trained bundle: `python -m shared pack`, served over HTTP on 127.0.0.1, fetched with
`python -m monai.bundle download --url`, verified offline, and run from a folder outside the repository.

The downloaded bundle must give the same output as the repository's bundle with the same weights, a tampered
model.pt must be refused with a message that says so, and a bundle built on a newer MONAI is reported the way MONAI
reports it.
"""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from shared.packaging import PackError, file_hash, pack_bundle, verify_weights
from tests.bundle_cases import CASES, REPO_ROOT, bundle_run, config_args
from tests.conftest import META_SCHEMA_MD5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """(folder, base URL) of a plain HTTP server on 127.0.0.1 serving that folder, stopped after the module."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _outside_env() -> dict[str, str]:
    """Environment of a user outside the repository: nothing of ours on PYTHONPATH."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _monai_bundle(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd,
        env=_outside_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _download(name: str, url: str, bundle_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    result = _monai_bundle(["download", "--name", name, "--url", url, "--bundle_dir", str(bundle_dir)], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _labels(folder: Path) -> dict[str, np.ndarray]:
    files = sorted(p for p in folder.rglob("*.nii*"))
    assert files, f"no NIfTI written in {folder}"
    return {p.name: np.asarray(nib.load(p).dataobj) for p in files}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_downloaded_bundle_runs_like_the_repository(case, tiny_trained, http_root, meta_schema, tmp_path):
    work, studies, model_pt = tiny_trained(case)
    www, base_url = http_root
    zip_path = pack_bundle(case.name, out=www / case.name, ckpt=model_pt, torchscript=False)
    url = f"{base_url}/{case.name}/{zip_path.name}"

    elsewhere = tmp_path / "user"
    elsewhere.mkdir()
    _download(case.name, url, tmp_path / "downloads", elsewhere)
    bundle = tmp_path / "downloads" / case.name
    assert (bundle / "shared" / "__init__.py").is_file(), "the packed bundle carries no copy of `shared`"

    verified = _monai_bundle(
        [
            "verify_metadata",
            "--meta_file",
            str(bundle / "configs" / "metadata.json"),
            "--filepath",
            str(meta_schema),
            "--hash_val",
            META_SCHEMA_MD5,
        ],
        elsewhere,
    )
    assert verified.returncode == 0, verified.stderr[-3000:]
    hashes = _monai_bundle(["download_large_files", "--bundle_path", str(bundle)], elsewhere)
    assert hashes.returncode == 0, hashes.stderr[-3000:]
    assert verify_weights(bundle) == []
    listed = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    assert [e["hash_val"] for e in listed if e["path"] == "models/model.pt"] == [file_hash(model_pt)]

    volumes = tmp_path / "volumes"
    volumes.mkdir()
    phantom = sorted(p for p in studies.glob("*.nii*"))[-1]
    shutil.copy(phantom, volumes / phantom.name)
    settings = {**case.tiny, **case.infer_args}
    downloaded_out, repo_out = tmp_path / "out_downloaded", tmp_path / "out_repo"
    ran = _monai_bundle(
        [
            "run",
            "--config_file",
            str(bundle / "configs" / "inference.json"),
            "--bundle_root",
            str(bundle),
            "--dataset_dir",
            str(volumes),
            "--output_dir",
            str(downloaded_out),
            *config_args(settings),
        ],
        elsewhere,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    bundle_run(
        "inference.json",
        case.name,
        {"dataset_dir": str(volumes), "output_dir": str(repo_out), "ckpt_path": str(model_pt), **settings},
        tmp_path / "repo_inference.log",
    )
    got, want = _labels(downloaded_out), _labels(repo_out)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} differs from the repository's run")


def test_tampered_weights_are_refused(tiny_trained, http_root, tmp_path):
    case = CASES[0]
    _, _, model_pt = tiny_trained(case)
    www, base_url = http_root
    zip_path = pack_bundle(case.name, out=www / "tamper", ckpt=model_pt, torchscript=False)
    _download(case.name, f"{base_url}/tamper/{zip_path.name}", tmp_path, tmp_path)
    weights = tmp_path / case.name / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    monai_check = _monai_bundle(["download_large_files", "--bundle_path", str(tmp_path / case.name)], tmp_path)
    assert monai_check.returncode != 0
    assert "hash check of existing file failed" in monai_check.stderr
    ours = subprocess.run(
        [sys.executable, "-m", "shared", "verify", str(tmp_path / case.name)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert ours.returncode == 1
    assert "model.pt" in ours.stderr and "does not match large_files.yml" in ours.stderr


def test_bundle_from_a_newer_monai_is_reported(tiny_trained, http_root, tmp_path):
    case = CASES[0]
    _, _, model_pt = tiny_trained(case)
    www, base_url = http_root
    zip_path = pack_bundle(case.name, out=tmp_path / "dist", ckpt=model_pt, torchscript=False)
    newer = www / "newer" / zip_path.name
    newer.parent.mkdir()
    meta_name = f"{case.name}/configs/metadata.json"
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(newer, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == meta_name:
                meta = json.loads(data)
                meta["monai_version"] = "99.0.0"
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    result = _download(case.name, f"{base_url}/newer/{newer.name}", tmp_path / "dl", tmp_path)
    assert "but the bundle is built on MONAI version 99.0.0" in result.stdout + result.stderr


def test_pack_writes_torchscript_and_hashes_every_weight_file(tmp_path):
    """The default MSAN network exports to TorchScript: the zip holds model.ts, listed with its hash."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / "msan_kits" / "configs" / "inference.json"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)  # models/model.pt: the plain state dict of network_def
    zip_path = pack_bundle("msan_kits", out=tmp_path / "dist", ckpt=ckpt)
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
    assert {"msan_kits/models/model.pt", "msan_kits/models/model.ts", "msan_kits/shared/networks/msan.py"} <= names
    assert "msan_kits/configs/metadata.json" in names and "msan_kits/LICENSE" in names
    listed = yaml.safe_load((tmp_path / "dist" / "msan_kits" / "large_files.yml").read_text())["large_files"]
    assert {e["path"] for e in listed} == {"models/model.pt", "models/model.ts"}
    assert verify_weights(tmp_path / "dist" / "msan_kits") == []


def test_pack_refuses_a_bundle_without_weights(tmp_path):
    with pytest.raises(PackError, match="no trained weights"):
        pack_bundle("msan_kits", out=tmp_path, ckpt=tmp_path / "missing.pt")
    assert not any(tmp_path.iterdir()), "a failed pack left files behind"
