"""The DICOM Sequence of Ultrasound Regions: which region is used, the exact crop, mm per
pixel; cine frame choices; pydicom's two real ultrasound files (issue 20)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from runtime.dicom_regions import (
    COLOUR_FLOW_REASON,
    UltrasoundRegion,
    choose_tissue_region,
    colour_flow_reason,
    read_regions,
)
from runtime.images import ImageReadError, decode_image
from runtime.scan_crop import RegionSetting, apply_region, choose_region
from runtime.scan_input import FrameChoice, decode_scan, read_scan
from tests.conftest import dicom_bytes

pydicom = pytest.importorskip("pydicom", minversion="3.0")


def region_item(x0, y0, x1, y1, data_type=1, spatial=1, units=(3, 3), delta=(0.01, 0.02)):
    from pydicom.dataset import Dataset
    item = Dataset()
    item.RegionSpatialFormat = spatial
    item.RegionDataType = data_type
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta
    return item


def screen(height=120, width=160, frames=None) -> np.ndarray:
    """A scanner screen whose every pixel value says where it is: row*7 + col*3 (mod 256)."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = ((rows * 7 + cols * 3) % 256).astype(np.uint8)
    if frames is None:
        return image
    return np.stack([(image + 10 * k).astype(np.uint8) for k in range(frames)])


def us_dicom(pixels, *items, **attrs) -> bytes:
    from pydicom.sequence import Sequence
    return dicom_bytes(pixels, "MONOCHROME2", SequenceOfUltrasoundRegions=Sequence(list(items)), **attrs)


# ------------------------------------------------------------------ the rule


def test_crop_is_exactly_the_region_max_inclusive():
    pixels = screen()
    scan = decode_scan(us_dicom(pixels, region_item(20, 10, 139, 99)), name="scan.dcm")
    cropped = apply_region(scan.display, dicom=scan.dicom)
    r = cropped.region
    assert (r.x, r.y, r.width, r.height, r.source) == (20, 10, 120, 90, "dicom")    # MaxX1/MaxY1 inclusive
    expected = pixels[10:100, 20:140]
    assert np.array_equal(cropped.image[..., 0], expected)                           # exactly those pixels
    assert cropped.image.shape == (90, 120, 3)


def test_mm_per_pixel_from_cm_deltas():
    scan = decode_scan(us_dicom(screen(), region_item(0, 0, 99, 59, delta=(0.0125, 0.025))), name="a.dcm")
    assert scan.dicom.region.mm_per_pixel == pytest.approx((0.125, 0.25))
    assert scan.dicom.region.to_dict()["mm_per_pixel"] == pytest.approx([0.125, 0.25])


@pytest.mark.parametrize("units", [(0, 0), (3, 4), (4, 3)])
def test_no_mm_per_pixel_unless_both_directions_are_cm(units):
    scan = decode_scan(us_dicom(screen(), region_item(0, 0, 99, 59, units=units)), name="a.dcm")
    assert scan.dicom.region is not None and scan.dicom.region.mm_per_pixel is None


def test_the_largest_2d_tissue_region_is_chosen():
    items = [region_item(0, 0, 159, 119, data_type=10, spatial=4),     # an ECG trace over everything
             region_item(5, 5, 44, 44),                                 # a small tissue region (40x40)
             region_item(50, 20, 149, 109),                             # the largest tissue region (100x90)
             region_item(0, 0, 150, 110, data_type=1, spatial=2)]       # M-mode: tissue, but not 2D
    scan = decode_scan(us_dicom(screen(), *items), name="a.dcm")
    r = scan.dicom.region
    assert (r.x, r.y, r.width, r.height) == (50, 20, 100, 90)
    assert scan.dicom.colour_flow is False


def test_equal_regions_keep_the_first():
    regions = [UltrasoundRegion(0, 0, 9, 9, 1, 1, 3, 3, 0.1, 0.1),
               UltrasoundRegion(20, 20, 29, 29, 1, 1, 3, 3, 0.1, 0.1)]
    assert choose_tissue_region(regions, 64, 64).region.x == 0


def test_one_pixel_past_the_edge_is_clipped():
    # pydicom's examples_palette.dcm: MaxX1 = 800 for an 800-column image
    scan = decode_scan(us_dicom(screen(), region_item(40, 30, 160, 120)), name="a.dcm")
    r = scan.dicom.region
    assert (r.x, r.y, r.x + r.width - 1, r.y + r.height - 1) == (40, 30, 159, 119)


def test_a_region_outside_the_pixels_is_not_used_and_says_why():
    data = us_dicom(screen(), region_item(40, 30, 300, 200))
    with pytest.warns(UserWarning, match="does not fit the 160x120 image"):
        scan = decode_scan(data, name="a.dcm")
    assert scan.dicom.region is None and "not used" in scan.dicom.reason
    assert choose_region(scan.display, RegionSetting("auto"), dicom=scan.dicom).source != "dicom"


def test_no_tissue_region_means_the_finder():
    data = us_dicom(screen(), region_item(0, 0, 99, 99, data_type=3, spatial=3))   # a PW spectral Doppler strip
    with pytest.warns(UserWarning, match="no 2D tissue region"):
        scan = decode_scan(data, name="a.dcm")
    assert choose_region(scan.display, RegionSetting("auto"), dicom=scan.dicom).source != "dicom"


def test_a_dicom_without_regions_is_not_warned_about():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan = decode_scan(dicom_bytes(screen()), name="a.dcm")
    assert scan.dicom is not None and scan.dicom.region is None and scan.dicom.reason is None


def test_a_colour_flow_region_is_a_refusal_reason():
    scan = decode_scan(us_dicom(screen(), region_item(0, 0, 159, 119), region_item(40, 30, 99, 79, data_type=2)),
                       name="doppler.dcm")
    assert scan.dicom.colour_flow and colour_flow_reason(scan.dicom) == COLOUR_FLOW_REASON
    assert scan.dicom.region.source == "dicom"       # the tissue region is still the box


def test_region_off_and_box_override_the_dicom_region():
    scan = decode_scan(us_dicom(screen(), region_item(20, 10, 139, 99)), name="a.dcm")
    assert choose_region(scan.display, RegionSetting("off"), dicom=scan.dicom).source == "whole"
    given = choose_region(scan.display, RegionSetting.parse("1,2,30,40"), dicom=scan.dicom)
    assert (given.x, given.y, given.width, given.height, given.source) == (1, 2, 30, 40, "given")


def test_read_regions_skips_items_without_a_location():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    broken = region_item(0, 0, 9, 9)
    del broken.RegionLocationMaxY1
    ds = Dataset()
    ds.SequenceOfUltrasoundRegions = Sequence([broken, region_item(1, 2, 3, 4)])
    assert [(r.min_x, r.min_y, r.max_x, r.max_y) for r in read_regions(ds)] == [(1, 2, 3, 4)]


# ------------------------------------------------------------------ cine frames


def test_frame_choices_of_a_cine_loop():
    cine = screen(64, 80, frames=5)
    data = dicom_bytes(cine, NumberOfFrames=5)
    middle = decode_scan(data, name="cine.dcm")
    assert middle.frame_numbers == [3] and middle.frame_count == 5 and middle.is_cine
    assert np.array_equal(middle.display[..., 0], cine[2])
    assert np.array_equal(decode_image(data, name="cine.dcm")[..., 0], cine[2])   # unchanged default
    every = decode_scan(data, name="cine.dcm", frames="all")
    assert every.frame_numbers == [1, 2, 3, 4, 5]
    assert all(np.array_equal(f[..., 0], cine[k]) for k, f in enumerate(every.frames))
    first = decode_scan(data, name="cine.dcm", frames=1)
    assert first.frame_numbers == [1] and np.array_equal(first.display[..., 0], cine[0])
    assert decode_scan(data, name="cine.dcm", frames="5").frame_numbers == [5]


def test_frame_out_of_range_is_a_clear_error(tmp_path):
    path = tmp_path / "cine.dcm"
    path.write_bytes(dicom_bytes(screen(64, 80, frames=5), NumberOfFrames=5))
    with pytest.raises(ImageReadError, match=r"cine.dcm: frame 6 asked for, but the file has 5 frames \(1 to 5\)"):
        read_scan(path, frames=6)
    png = tmp_path / "still.png"
    import cv2
    cv2.imwrite(str(png), screen())
    for choice in (1, 7, "all", "middle"):          # a still image is classified as it is
        assert read_scan(png, frames=choice).frame_numbers == [1] and read_scan(png, frames=choice).frame_count == 1
    single = tmp_path / "single.dcm"
    single.write_bytes(dicom_bytes(screen(64, 80)))
    assert read_scan(single, frames=3).frame_numbers == [1]


@pytest.mark.parametrize("bad", ["0", "-1", "first", "1.5", "", True])
def test_bad_frame_choices(bad):
    with pytest.raises(ValueError, match="frame"):
        FrameChoice.parse(bad)


def test_all_frames_of_a_long_cine_stay_under_the_pixel_limit():
    data = dicom_bytes(screen(64, 80, frames=5), NumberOfFrames=5)
    with pytest.raises(ImageReadError, match="over the limit"):
        decode_scan(data, max_pixels=64 * 80 * 4, name="cine.dcm", frames="all")
    assert decode_scan(data, max_pixels=64 * 80 * 4, name="cine.dcm").frame_numbers == [3]


# ------------------------------------------------------------------ pydicom's real files


def real(name: str):
    from pydicom.data import get_testdata_file
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return path


def test_examples_ybr_color_regions_and_frames():
    path = real("examples_ybr_color.dcm")
    (region,) = read_regions(pydicom.dcmread(path))
    # what the file states: a 2D tissue region in cm, 0.0510 cm per pixel
    assert (region.min_x, region.min_y, region.max_x, region.max_y) == (84, 31, 595, 414)
    assert region.is_tissue_2d and region.mm_per_pixel() == pytest.approx((0.5104970559, 0.5104970559))
    # ... but its pixels are 320x240 (resized after the scanner wrote the region): not used
    with pytest.warns(UserWarning, match=r"\(84,31\)-\(595,414\) does not fit the 320x240 image"):
        scan = read_scan(path, frames="all")
    assert scan.frame_count == 30 and scan.frame_numbers == list(range(1, 31))
    assert scan.dicom.region is None and not scan.dicom.colour_flow


def test_examples_palette_regions():
    path = real("examples_palette.dcm")
    regions = read_regions(pydicom.dcmread(path))
    assert [(r.data_type, r.spatial_format) for r in regions] == [(1, 1), (10, 4)]   # tissue 2D, ECG trace
    tissue = regions[0]
    assert (tissue.min_x, tissue.min_y, tissue.max_x, tissue.max_y) == (120, 60, 800, 518)
    assert tissue.mm_per_pixel() == pytest.approx((0.2622878766, 0.2622878766))
    assert regions[1].mm_per_pixel() is None                       # seconds across, no unit down
    # 800x350 pixels: MaxX1 = 800 alone would be clipped, but MaxY1 = 518 is far below the image
    with pytest.warns(UserWarning, match="does not fit the 800x350 image"):
        scan = read_scan(path)
    assert scan.frame_count == 1 and scan.dicom.region is None
