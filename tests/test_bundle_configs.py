"""Every config of every bundle parses on a fresh clone (no dataset, no weights), as `monai.bundle` tools that only
parse need, and names only things that exist: each `_target_` locates and each `@id` it refers to is defined."""

from pathlib import Path

import pytest
from monai.bundle import ConfigComponent, ConfigParser
from monai.bundle.config_item import ComponentLocator
from monai.bundle.reference_resolver import ReferenceResolver
from monai.utils.module import locate

from tests.conftest import REPO_ROOT

BUNDLES_DIR = REPO_ROOT / "bundles"
BASES = ("train.json", "inference.json")
# overlays whose base is not the default (train.json, or inference.json for inference_*.json): (bundle, files...)
EXTRA_SETS: list[tuple[str, ...]] = [
    # the VA Faster R-CNN overlay also goes after evaluate.json and inference.json
    ("cs_att_deeplesion", "train.json", "evaluate.json", "va_faster_rcnn.json"),
    ("cs_att_deeplesion", "inference.json", "va_faster_rcnn.json"),
]


def _config_sets() -> list[tuple[str, ...]]:
    """(bundle, base config[, overlay]) for every config file of every bundle, plus EXTRA_SETS."""
    sets = []
    for bundle_dir in sorted(p.parent.parent for p in BUNDLES_DIR.glob("*/configs/metadata.json")):
        for config in sorted((bundle_dir / "configs").glob("*.json")):
            if config.name == "metadata.json":
                continue
            if config.name in BASES:
                sets.append((bundle_dir.name, config.name))
            else:
                base = "inference.json" if config.name.startswith("inference_") else "train.json"
                sets.append((bundle_dir.name, base, config.name))
    return sets + EXTRA_SETS


def _targets(config) -> list[str]:
    """Every `_target_` string in a (nested) config."""
    if isinstance(config, dict):
        own = [config["_target_"]] if isinstance(config.get("_target_"), str) else []
        return own + [t for v in config.values() for t in _targets(v)]
    if isinstance(config, list):
        return [t for v in config for t in _targets(v)]
    return []


def _parsed(bundle: str, files: tuple[str, ...]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES_DIR / bundle / "configs" / name) for name in files])
    parser.parse()
    return parser


def test_every_bundle_and_config_is_covered():
    sets = _config_sets()
    assert {s[0] for s in sets} == {"msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion"}
    covered = {(bundle, name) for bundle, *files in sets for name in files}
    on_disk = {(p.parent.parent.name, p.name) for p in BUNDLES_DIR.glob("*/configs/*.json")}
    assert on_disk - {(b, "metadata.json") for b, _ in on_disk} <= covered


@pytest.mark.parametrize("files", _config_sets(), ids=lambda s: "/".join(s))
def test_config_targets_locate_and_references_exist(files):
    bundle, *names = files
    parser = _parsed(bundle, tuple(names))
    locator = ComponentLocator()
    missing = []
    for target in sorted(set(_targets(parser.get()))):
        module_name = ConfigComponent(config={"_target_": target}, locator=locator).resolve_module_name()
        if not module_name or locate(module_name) is None:
            missing.append(target)
    assert not missing, f"{files}: _target_ not found: {missing}"

    resolver: ReferenceResolver = parser.ref_resolver
    undefined = sorted(
        f"{item_id} -> @{ref}"
        for item_id, item in resolver.items.items()
        for ref in ReferenceResolver.find_refs_in_config(item.get_config(), id=item_id)
        if ref not in resolver.items
    )
    assert not undefined, f"{files}: references to undefined ids: {undefined}"


def test_bundle_folders_import_shared_through_their_own_link():
    """`cd bundles/<bundle> && python -m monai.bundle ...` finds `shared` there: a link to ../../shared."""
    for bundle_dir in sorted(p.parent.parent for p in BUNDLES_DIR.glob("*/configs/metadata.json")):
        link = bundle_dir / "shared"
        assert link.is_symlink() and Path(link.readlink()) == Path("../../shared"), link
        assert (link / "__init__.py").is_file()
