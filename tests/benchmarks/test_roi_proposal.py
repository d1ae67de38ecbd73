"""benchmarks.studies.roi_proposal on a few real lesion images of the shipped model's split."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.studies.roi_proposal import main, measure
from runtime.manifest import read_manifest
from tests.conftest import BUSI, missing

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "runtime" / "models" / "bus-vgg16-w50-128"


@pytest.mark.slow   # reads both sources' indexes of the split (about 10 s here)
def test_proposed_boxes_are_scored_against_the_masks(tmp_path):
    if not BUSI.is_dir() or not (SHIPPED / "split.json").is_file():
        missing("BUSI development data or the shipped model not present")
    result = measure(SHIPPED, "val", limit=6)
    # the export's lesion localiser proposes when it ships one, its Grad-CAM otherwise
    proposer = "localiser" if read_manifest(SHIPPED / "manifest.json").localiser is not None else "gradcam"
    assert result["images"] == 6 and result["proposer"] == proposer
    total = sum(s["lesions"] for s in result["sources"].values())
    assert total == 6 and all(s["errors"] == 0 for s in result["sources"].values())
    assert sum(s["hits"] for s in result["sources"].values()) >= 1      # some proposals lie on their lesion
    assert result["auto_over_none"] is not None and set(result["ms_per_image"]) == {"auto", "none"}
    assert main([str(SHIPPED), "--part", "val", "--limit", "2", "--out", str(tmp_path)]) == 0
    assert "IoU >= 0.5" in (tmp_path / "roi_proposal.md").read_text()
