"""The LLaVA JSON layout of DX-LLaVA (raytrain.data.layouts.llava): rows with explanations and domains,
bad entries rejected with their ids, undecodable images skipped and reported; ingested serially, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytrain.data.ingest import Source, ingest, scan_sources
from raytrain.data.layouts import detect_layout
from raytrain.data.layouts.llava import reasoning
from tests.helpers.layout_trees import llava


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def ingested(tree):
    return ingest(scan_sources([Source(tree)]))


def test_detected_before_the_dfr5_tree_it_sits_in(tree):
    assert detect_layout(tree) == "llava"


def test_rows_labels_explanations_domains_and_splits(tree, ingested):
    rows = {Path(r["path"]).relative_to(tree).as_posix(): r for r in ingested.rows}
    view = {k: (r["label"], r["domain"], r["split"], r["explanation"]) for k, r in rows.items()}
    assert view == {
        "ddim/train/fake/fake_0.png": ("fake", "ddim", "train", "**Seam**: a hard edge around the face."),
        "ddim/train/real/real_0.png": ("real", "ddim", "train", "**Light**: natural, even skin pores."),
        "StyleGAN3/train/fake/fake_0.png": ("fake", "StyleGAN3", "train", "**Texture**: too smooth."),
        "extra/loose.png": ("real", "", "train", "Looks fine."),  # the file's name gives the split
        "ddim/test/fake/fake_0.png": ("fake", "ddim", "test", "**Cue**: grid."),
    }
    assert all(r["media"] == "image" and r["source"] == "llava" and r["category"] in ("real", "image-generation")
               for r in rows.values())


def test_bad_entries_are_rejected_with_their_ids(ingested):
    reasons = sorted(r["reason"] for r in ingested.rejects)
    expected = [
        "train.json entry 'no-image': the human turn has no <image>",
        "train.json entry 'no-gpt': no gpt turn",
        "train.json entry 'contradiction': binary_label 1 (fake) contradicts the answer 'real'",
        "train.json entry 'unlabelled': no binary_label (0 real, 1 fake) and no ### Answer: real|fake, got None",
        "train.json entry 'missing': image 'ddim/train/fake/gone.png' does not exist",
        "train.json entry 11: not an object",
    ]
    for reason in expected:
        assert reason in reasons, reasons
    assert any(r.startswith("train.json entry 'outside': image '../elsewhere.png' is outside") for r in reasons)


def test_an_undecodable_image_is_skipped_and_reported(tree, ingested):
    broken = str(tree / "ddim" / "train" / "fake" / "broken.png")
    assert broken not in {r["path"] for r in ingested.rows}
    (reject,) = [r for r in ingested.rejects if r["path"] == broken]
    assert "cannot decode image" in reject["reason"]


def test_reasoning_drops_the_last_answer():
    assert reasoning("**A**: x.\n\n**B**: y. ### Answer: fake") == "**A**: x.\n\n**B**: y."
    assert reasoning("No answer line.") == "No answer line."


def test_a_json_that_is_not_a_list_is_an_error(tmp_path):
    (tmp_path / "data.json").write_text('[{"conversations": []}')  # detected, but truncated
    with pytest.raises(ValueError, match="not valid JSON"):
        scan_sources([Source(tmp_path, layout="llava")])
