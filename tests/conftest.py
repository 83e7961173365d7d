"""Fixtures every test module may use: paths to the repository and to the files vendored in tests/data."""

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "tests" / "data"

# The smallest VA Mask R-CNN the va_maskrcnn_lits tests train (32 px bags of 3, ResNet-18, few proposals).
VA_TINY_NETWORK = {
    "image_size": 32,
    "bag_size": 3,
    "backbone": "resnet18",
    "proposals_train": 50,
    "proposals_test": 20,
    "roi_samples": 16,
    "detections_per_image": 5,
}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def _data_path(*parts: str) -> Path:
    """A file or folder under tests/data; a missing one fails the test (it is part of the repository)."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: it is part of the repository (see tests/data/README.md)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def totalseg_dir() -> Path:
    """tests/data/totalsegmentator_example: a real abdominal CT (NIfTI and DICOM) with organ labels."""
    return _data_path("totalsegmentator_example")


@pytest.fixture(scope="session")
def meta_schema() -> Path:
    """tests/data/schemas/meta_schema_20240725.json, the MONAI bundle metadata schema for offline verify_metadata."""
    return _data_path("schemas", "meta_schema_20240725.json")


META_SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"


@pytest.fixture(autouse=True)
def _private_cache_home(tmp_path_factory, monkeypatch):
    """Keep the validation cache (``$XDG_CACHE_HOME``) of every test inside pytest's temporary folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """``tiny_trained(case) -> (work dir, studies dir, model.pt)``: each bundle's tiny model, trained once a session.

    See tests/bundle_cases.py; the packing, download and MONAI Label tests share these models.
    """
    from tests.bundle_cases import train_tiny

    trained = {}

    def get(case):
        if case.name not in trained:
            work = tmp_path_factory.mktemp(f"tiny_{case.name}")
            trained[case.name] = (work, *train_tiny(case, work))
        return trained[case.name]

    return get


def pytest_collection_modifyitems(config, items):
    """Leave the `load` tests (minutes of server load) out of every run whose -m expression does not name `load`."""
    if re.search(r"\bload\b", config.getoption("markexpr") or ""):
        return
    dropped = [item for item in items if item.get_closest_marker("load")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("load")]
