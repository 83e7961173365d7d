"""The docs a user reads: each bundle README stays short (the model zoo's shape, at most 200 lines), and every relative
link and image path in the docs points at a file or folder that exists."""

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion")
MAX_README_LINES = 200

# [text](target) and ![alt](target), target up to a space (an optional "title" follows) or the closing parenthesis;
# <img src="target"> for pictures sized in HTML
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<img\s[^>]*src=[\"']([^\"']+)[\"']", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~)")


def doc_files() -> list[Path]:
    files = [REPO_ROOT / "README.md"]
    for pattern in ("docs/*.md", "docs/experiments/*.md", "bundles/*/docs/*.md"):
        files += sorted(REPO_ROOT.glob(pattern))
    return files


def relative_targets(text: str) -> list[tuple[int, str]]:
    """``(line number, target)`` of every link and image outside code (fenced blocks, indented blocks and inline
    code spans), without http(s)/mailto links, pure ``#anchors`` and the ``#anchor`` part of the others."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if fenced or line.startswith("    ") or line.startswith("\t"):
            continue
        prose = re.sub(r"`[^`]*`", "", line)
        for target in MARKDOWN_LINK.findall(prose) + HTML_SRC.findall(prose):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                continue
            found.append((number, target.split("#", 1)[0]))
    return found


def test_the_link_finder_sees_links_images_and_html_and_skips_code_urls_and_anchors():
    text = "\n".join(
        [
            'See [a](a.md), ![b](img/b.png "title") and <img width=100 src="c.png">.',
            "Not [web](https://x.org), [mail](mailto:a@b), [anchor](#top), but [d](d.md#part).",
            "`[code](e.md)` is code,",
            "    ![indented](f.png)",
            "```",
            "[fenced](g.md)",
            "```",
        ]
    )
    assert relative_targets(text) == [(1, "a.md"), (1, "img/b.png"), (1, "c.png"), (2, "d.md")]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_readme_is_at_most_200_lines(bundle):
    lines = (REPO_ROOT / "bundles" / bundle / "docs" / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"bundles/{bundle}/docs/README.md has {len(lines)} lines (at most {MAX_README_LINES}): move experiments to "
        f"docs/experiments/{bundle}.md and details to bundles/{bundle}/docs/design.md"
    )


def test_every_bundle_has_its_experiments_file_linked_from_its_readme():
    for bundle in BUNDLES:
        readme = (REPO_ROOT / "bundles" / bundle / "docs" / "README.md").read_text()
        assert (REPO_ROOT / "docs" / "experiments" / f"{bundle}.md").is_file()
        assert f"../../../docs/experiments/{bundle}.md" in readme, f"{bundle}'s README does not link its experiments"


def test_every_relative_link_and_image_in_the_docs_exists():
    files = doc_files()
    assert len(files) >= 10, [str(f) for f in files]  # README, docs/*, experiments, three bundles' docs
    broken = []
    for doc in files:
        for number, target in relative_targets(doc.read_text()):
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO_ROOT)}:{number}: {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_doc_pictures_are_small():
    pictures = sorted(REPO_ROOT.glob("bundles/*/docs/images/*.png"))
    assert pictures
    large = [f"{p.relative_to(REPO_ROOT)}: {p.stat().st_size} bytes" for p in pictures if p.stat().st_size >= 300_000]
    assert not large, large
