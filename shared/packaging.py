"""Pack a bundle into a self-contained folder and zip that ``monai.bundle download --url`` can fetch.

A packed bundle holds its configs, docs, LICENSE, ``models/model.pt`` (and ``models/model.ts`` where TorchScript
export works), ``large_files.yml`` with the SHA-256 of every weight file (the model zoo's format, so
``python -m monai.bundle download_large_files --bundle_path <dir>`` refuses a tampered file), and a copy of the
``shared`` package in its root: every config puts ``@bundle_root`` first on ``sys.path``, so the bundle runs from
any working directory without this repository.
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from shared.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
SHARED_PACKAGE = Path(__file__).resolve().parent
BUNDLE_ITEMS = ("configs", "docs", "LICENSE")
HASH_TYPE = "sha256"


class PackError(InputError):
    """A bundle cannot be packed because of its input (missing weights, metadata without a changelog entry, ...)."""


def file_hash(path: Path, hash_type: str = HASH_TYPE) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(bundle_dir: Path) -> dict:
    """``configs/metadata.json`` of a bundle folder, with its version checked against its changelog."""
    meta_file = bundle_dir / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise PackError(f"{meta_file}: no metadata.json; is {bundle_dir} a bundle folder?")
    meta = json.loads(meta_file.read_text())
    version = meta.get("version")
    if not version or version not in meta.get("changelog", {}):
        raise PackError(
            f"{meta_file}: version {version!r} has no entry in 'changelog'; add one describing this release"
        )
    return meta


def _export_torchscript(bundle_dir: Path, ckpt: Path, out_ts: Path) -> str | None:
    """Try ``monai.bundle ckpt_export`` on the bundle's inference config; return None on success, else the reason."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(out_ts),
        "--ckpt_file",
        str(ckpt),
        "--meta_file",
        str(bundle_dir / "configs" / "metadata.json"),
        "--config_file",
        str(bundle_dir / "configs" / "inference.json"),
        "--bundle_root",
        str(bundle_dir),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=bundle_dir)
    if result.returncode == 0 and out_ts.is_file():
        return None
    out_ts.unlink(missing_ok=True)
    return error_summary(result.stderr + result.stdout) or f"exit code {result.returncode}"


def error_summary(output: str) -> str:
    """The exception that ended OUTPUT (a process's stderr) as one line: ``Type: first message line (file:line)``.

    TorchScript errors leave the type line empty and put the message, then the quoted source, on the lines below;
    the location is the first ``File "...", line N`` after the message. Without a traceback: the last line.
    """
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return next((line.strip() for line in reversed(lines) if line.strip()), "")
    after = lines[starts[-1] + 1 :]
    exc = next((i for i, line in enumerate(after) if line and not line[0].isspace()), None)
    if exc is None:
        return ""
    kind, _, message = after[exc].partition(": ")
    rest = [line.strip() for line in after[exc + 1 :] if line.strip()]
    message = (message.strip() or next((line for line in rest if not line.startswith("File ")), "")).rstrip(":")
    place = next((re.match(r'File "([^"]+)", line (\d+)', line) for line in rest if line.startswith("File ")), None)
    where = f" ({Path(place[1]).name}:{place[2]})" if place else ""
    return f"{kind.strip()}: {message}{where}" if message else kind.strip() + where


def pack_bundle(
    bundle: str,
    out: str | Path = "dist",
    ckpt: str | Path | None = None,
    base_url: str = "",
    torchscript: bool = True,
) -> Path:
    """Write ``<out>/<bundle>/`` and ``<out>/<bundle>_v<version>.zip``; return the zip's path.

    ``bundle`` is a name under ``bundles/`` or a path to a bundle folder; ``ckpt`` defaults to the bundle's
    ``models/model.pt``; ``base_url``, if given, is where ``large_files.yml`` says the weights can be fetched.
    Everything is assembled in a temporary folder and moved into place at the end, so a failure leaves nothing.
    """
    bundle_dir = Path(bundle) if Path(bundle).is_dir() else BUNDLES_DIR / bundle
    if not bundle_dir.is_dir():
        choices = ", ".join(sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs").is_dir()))
        raise PackError(f"{bundle_dir}: no such bundle; choose one of {choices} or give a bundle folder")
    name = bundle_dir.resolve().name
    meta = read_metadata(bundle_dir)
    ckpt = Path(ckpt) if ckpt else bundle_dir / "models" / "model.pt"
    if not ckpt.is_file():
        raise PackError(
            f"{ckpt}: no trained weights to pack; train first (see {bundle_dir / 'docs' / 'README.md'}) "
            "or pass --ckpt PATH"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    zip_path = out / f"{name}_v{meta['version']}.zip"
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        for item in BUNDLE_ITEMS:
            src = bundle_dir / item
            if src.is_dir():
                shutil.copytree(src, stage / item)
            elif src.is_file():
                shutil.copy2(src, stage / item)
            else:
                raise PackError(f"{src}: missing; every bundle needs {', '.join(BUNDLE_ITEMS)}")
        shutil.copytree(SHARED_PACKAGE, stage / "shared", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        models = stage / "models"
        models.mkdir()
        shutil.copy2(ckpt, models / "model.pt")
        if torchscript:
            reason = _export_torchscript(stage, models / "model.pt", models / "model.ts")
            if reason:
                print(f"{name}: packed without models/model.ts, TorchScript export failed: {reason}", file=sys.stderr)
        large_files = [
            {
                "path": f"models/{weights.name}",
                "url": f"{base_url.rstrip('/')}/{weights.name}" if base_url else "",
                "hash_val": file_hash(weights),
                "hash_type": HASH_TYPE,
            }
            for weights in sorted(models.iterdir())
        ]
        (stage / "large_files.yml").write_text(yaml.safe_dump({"large_files": large_files}, sort_keys=False))
        tmp_zip = Path(tmp) / zip_path.name
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(stage.rglob("*")):
                zf.write(path, path.relative_to(stage.parent).as_posix())
        final_dir = out / name
        if final_dir.exists():
            shutil.rmtree(final_dir)
        stage.replace(final_dir)
        tmp_zip.replace(zip_path)
    return zip_path


def verify_weights(bundle_dir: str | Path) -> list[str]:
    """Compare every file listed in ``large_files.yml`` with its recorded hash; return the problems (empty: ok)."""
    bundle_dir = Path(bundle_dir)
    listing = bundle_dir / "large_files.yml"
    if not listing.is_file():
        return [f"{listing}: missing; this bundle was not packed with `python -m shared pack`"]
    problems = []
    for entry in yaml.safe_load(listing.read_text())["large_files"]:
        path = bundle_dir / entry["path"]
        if not path.is_file():
            problems.append(f"{path}: listed in large_files.yml but missing")
        elif file_hash(path, entry.get("hash_type", HASH_TYPE)) != entry["hash_val"]:
            problems.append(
                f"{path}: {entry.get('hash_type', HASH_TYPE)} does not match large_files.yml; the file was modified "
                "or corrupted after packing: do not use it, download the bundle again from a source you trust"
            )
    return problems
