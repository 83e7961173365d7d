"""Every boolean knob of every bundle, typed on the command line.

A boolean knob is a top-level config id whose default is true/false (a JSON boolean, or an expression of plain values
giving one, like ``amp``). ``python -m monai.bundle run ... --<knob> false`` hands the config the string 'false'
(fire turns only False/True into booleans and 0/1 into ints), so each use of a knob must read it with
``$@as_bool(@<knob>, '<knob>')`` or pass it to a function that does (:data:`SELF_READING`). The static test reads all
configs so that a new knob or a new use cannot bypass that; the CLI tests type every knob of a config set as
false and as true in mixed spellings and print what each use resolved to (a probe id added by one more config file).
"""

import ast
import functools
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from monai.bundle import ConfigParser

from tests.conftest import REPO_ROOT
from tests.test_user_errors import PROG, _user_error

BUNDLES = REPO_ROOT / "bundles"
# the config files each bundle is run with, an overlay after its base (the bundles' docs/README.md)
CONFIG_SETS = {
    "msan_kits": [
        ("train.json",),
        ("train.json", "evaluate.json"),
        ("train.json", "multi_gpu_train.json"),
        ("inference.json",),
        ("inference.json", "inference_ensemble.json"),
    ],
    "va_maskrcnn_lits": [
        ("train.json",),
        ("train.json", "evaluate.json"),
        ("train.json", "multi_gpu_train.json"),
        ("inference.json",),
    ],
    "cs_att_deeplesion": [
        ("train.json",),
        ("train.json", "evaluate.json"),
        ("train.json", "multi_gpu_train.json"),
        ("inference.json",),
        ("train.json", "va_faster_rcnn.json"),
        ("train.json", "evaluate.json", "va_faster_rcnn.json"),
        ("train.json", "multi_gpu_train.json", "va_faster_rcnn.json"),
        ("inference.json", "va_faster_rcnn.json"),
    ],
}
# the sets run through the CLI: together they hold every use of every knob of CONFIG_SETS (checked below)
CLI_SETS = [
    ("msan_kits", ("train.json",)),
    ("msan_kits", ("inference.json",)),
    ("msan_kits", ("inference.json", "inference_ensemble.json")),
    ("va_maskrcnn_lits", ("train.json",)),
    ("va_maskrcnn_lits", ("inference.json",)),
    ("cs_att_deeplesion", ("train.json",)),
    ("cs_att_deeplesion", ("train.json", "evaluate.json")),
    ("cs_att_deeplesion", ("inference.json",)),
    ("cs_att_deeplesion", ("train.json", "va_faster_rcnn.json")),
    ("cs_att_deeplesion", ("inference.json", "va_faster_rcnn.json")),
]
# (component _target_, argument): functions that read the boolean knob passed to that argument with as_bool
SELF_READING = {("shared.engines.checkpoint.resume_path", "resume")}
# uses inside a larger expression: what the id resolves to with the knob typed false / true
NO_PRETRAINED = {
    "load_pretrained#_disabled_": {False: True, True: False},
    "load_pretrained#path#_disabled_": {False: True, True: False},
}
EXPRESSIONS = {
    "va_maskrcnn_lits": {
        "trainable_backbone_layers": {False: 5, True: 3},  # frozen batch norm: the first 2 backbone stages frozen
        **NO_PRETRAINED,
    },
    "cs_att_deeplesion": NO_PRETRAINED,
}
SPELLINGS = {False: ("false", "False", "0", "FALSE"), True: ("true", "True", "1", "TRUE")}
CHECKPOINT = "resume_checkpoint_epoch=1.pt"


class Use(NamedTuple):
    knob: str
    id: str  # the config id whose value mentions @knob
    value: str
    kind: str  # "as_bool": the value is $@as_bool(@knob, 'knob'); "reader": SELF_READING; "expression"; "bare"


def _parser(bundle: str, files: tuple[str, ...]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / name) for name in files])
    return parser


def _plain(config: dict, key: str, seen: tuple[str, ...] = ()) -> bool:
    """Whether top-level ``key`` is a value, or an expression of such values (cheap to evaluate, needs no data)."""
    value = config.get(key)
    if isinstance(value, (dict, list)) or key in seen:
        return False
    if not (isinstance(value, str) and value.startswith("$")):
        return True
    refs = re.findall(r"@([\w#]+)", value)
    return all(ref == "as_bool" or ("#" not in ref and _plain(config, ref, (*seen, key))) for ref in refs)


def boolean_knobs(parser: ConfigParser) -> list[str]:
    """The top-level ids whose default is a boolean (evaluating the expressions of plain values)."""
    config = parser.get()
    knobs = []
    for key, value in config.items():
        if isinstance(value, str) and value.startswith("$") and _plain(config, key):
            value = parser.get_parsed_content(key)
        if isinstance(value, bool):
            knobs.append(key)
    return sorted(knobs)


@functools.cache
def bundle_knobs(bundle: str) -> frozenset[str]:
    """The boolean knobs of all of a bundle's config sets; those with the DDP overlay are read without it (its
    expressions, like va_maskrcnn_lits' learning_rate, need a process group), except its JSON booleans."""
    knobs = set()
    for files in CONFIG_SETS[bundle]:
        if "multi_gpu_train.json" in files:
            config = ConfigParser.load_config_file(BUNDLES / bundle / "configs" / "multi_gpu_train.json")
            knobs |= {key for key, value in config.items() if isinstance(value, bool) and "#" not in key}
        else:
            knobs |= set(boolean_knobs(_parser(bundle, files)))
    return frozenset(knobs)


def _strings(node, path: tuple[str, ...] = ()):
    """(config id, value) of every string in a config tree."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        if isinstance(node, str):
            yield "#".join(path), node
        return
    for key, child in items:
        yield from _strings(child, (*path, str(key)))


@functools.cache
def knob_uses(bundle: str, files: tuple[str, ...]) -> tuple[list[str], list[Use]]:
    """The boolean knobs a config set defines, and every config value that mentions one, by how it reads it."""
    parser = _parser(bundle, files)
    knobs = sorted(k for k in bundle_knobs(bundle) if k in parser.get())
    uses = []
    for id_, value in _strings(parser.get()):
        for knob in knobs:
            mention = re.compile(rf"@{knob}(?![\w#])")
            if not mention.search(value):
                continue
            call = f"@as_bool(@{knob}, '{knob}')"
            parent, _, argument = id_.rpartition("#")
            target = parser[parent].get("_target_") if parent and isinstance(parser[parent], dict) else None
            if value == f"${call}":
                kind = "as_bool"
            elif value == f"@{knob}" and (target, argument) in SELF_READING:
                kind = "reader"
            elif not mention.search(value.replace(call, "")):
                kind = "expression"
            else:
                kind = "bare"
            uses.append(Use(knob, id_, value, kind))
    return knobs, uses


def _all_sets():
    return [(bundle, files) for bundle, sets in CONFIG_SETS.items() for files in sets]


def test_the_config_sets_hold_every_config_file():
    for bundle, sets in CONFIG_SETS.items():
        files = {p.name for p in (BUNDLES / bundle / "configs").glob("*.json")} - {"metadata.json"}
        assert files == set(itertools.chain(*sets)), bundle


@pytest.mark.parametrize("bundle, files", _all_sets())
def test_every_use_of_a_boolean_knob_goes_through_as_bool(bundle, files):
    knobs, uses = knob_uses(bundle, files)
    assert knobs and uses, f"{bundle} {files}: no boolean knob found"
    bare = [f"{u.id} = {u.value!r}" for u in uses if u.kind == "bare"]
    assert not bare, f"{bundle} {files}: boolean knobs read without $@as_bool(@<knob>, '<knob>'): {bare}"


def test_the_cli_sets_hold_every_use_and_know_each_expression():
    every = {(bundle, u.id, u.value) for bundle, files in _all_sets() for u in knob_uses(bundle, files)[1]}
    in_cli = {(bundle, u.id, u.value) for bundle, files in CLI_SETS for u in knob_uses(bundle, files)[1]}
    assert every <= in_cli, sorted(every - in_cli)
    for bundle, files in CLI_SETS:
        knobs, uses = knob_uses(bundle, files)
        for use in uses:
            if use.kind == "expression" and use.id not in knobs:  # a knob's own default is replaced when typed
                assert use.id in EXPRESSIONS.get(bundle, {}), f"{bundle} {files}: add {use.id} to EXPRESSIONS"


def _probed_ids(bundle: str, files: tuple[str, ...]) -> list[str]:
    """The ids the probe prints: each use of a knob (a SELF_READING use: the component it is passed to)."""
    knobs, uses = knob_uses(bundle, files)
    return sorted({u.id.rpartition("#")[0] if u.kind == "reader" else u.id for u in uses} - set(knobs))


def _probe(bundle: str, files: tuple[str, ...], typed: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run probe`` with the knobs typed as given; the probe prints the values of
    :func:`_probed_ids` as ``RESOLVED [value, ...]`` (a list: MONAI rewrites '#' inside expressions)."""
    shown = ", ".join(f"@{i}" for i in _probed_ids(bundle, files))
    probe = tmp_path / "probe.json"
    # no initialize: va_maskrcnn_lits' loads the COCO weights when pretrained is true
    probe.write_text(json.dumps({"initialize": [], "probe": f"$print('RESOLVED', repr([{shown}]))"}))
    config_files = str([str(BUNDLES / bundle / "configs" / name) for name in files] + [str(probe)])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "probe", "--config_file", config_files]
    cmd += ["--ckpt_dir", str(tmp_path / "models")] if "resume" in typed else []
    cmd += [a for knob, value in typed.items() for a in (f"--{knob}", value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("bundle, files", CLI_SETS)
def test_typed_false_and_true_reach_every_use(bundle, files, tmp_path):
    knobs, uses = knob_uses(bundle, files)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / CHECKPOINT).write_bytes(b"")  # what --resume true picks
    for meant in (False, True):
        typed = dict(zip(knobs, itertools.cycle(SPELLINGS[meant])))
        done = _probe(bundle, files, typed, tmp_path)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESOLVED ")]
        assert done.returncode == 0 and len(lines) == 1, done.stdout[-3000:] + done.stderr[-5000:]
        resolved = dict(zip(_probed_ids(bundle, files), ast.literal_eval(lines[0].removeprefix("RESOLVED "))))
        for use in uses:
            if use.id in knobs:  # another knob's default, replaced by what was typed for it
                continue
            if use.kind == "as_bool":
                assert resolved[use.id] is meant, f"--{use.knob} {typed[use.knob]}: {use.id} = {resolved[use.id]!r}"
            elif use.kind == "reader":  # resume_path: the newest checkpoint only with --resume true
                expected = str(tmp_path / "models" / CHECKPOINT) if meant else None
                assert resolved[use.id.rpartition("#")[0]] == expected, (typed[use.knob], use)
            else:
                assert resolved[use.id] == EXPRESSIONS[bundle][use.id][meant], (typed[use.knob], use)


@pytest.mark.parametrize(
    "bundle, knob",
    [("msan_kits", "resume"), ("va_maskrcnn_lits", "pretrained"), ("cs_att_deeplesion", "contextual_attention")],
)
def test_a_value_other_than_true_or_false_is_refused_naming_the_knob(bundle, knob, tmp_path):
    line = _user_error(_probe(bundle, ("train.json",), {knob: "maybe"}, tmp_path))
    assert line == f"{PROG}{knob}: expected true or false (or 1 / 0), got 'maybe'; pass --{knob} true or --{knob} false"
