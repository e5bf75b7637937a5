"""Rendering: modality LUT, window/level, presets, MONOCHROME1, compressed and colour inputs, the cache."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from archive_core.render import PRESETS, RenderCache, RenderError, RenderParams, render, to_display
from tests.helpers import make_ct

STORED = [0, 412, 512, 612, 1024, 2048]  # with slope 2, intercept -1024: -1024, -200, 0, 200, 1024, 3072 HU


def ct_row(**extra):
    ds = make_ct(rows=1, **{"RescaleSlope": 2, "RescaleIntercept": -1024, **extra})
    ds.Columns = len(STORED)
    ds.PixelData = np.array(STORED, dtype=np.uint16).tobytes()
    return ds


@pytest.mark.parametrize(
    "params, extra, expected",
    [
        # manual window centre 0 width 400 on Hounsfield units (after rescale)
        (RenderParams(window_center=0, window_width=400), {}, [0, 0, 128, 255, 255, 255]),
        # the dataset's own window when nothing is asked
        (RenderParams(), {"WindowCenter": 1024, "WindowWidth": 2}, [0, 0, 0, 0, 255, 255]),
        # the bone preset (400/1800): -1024 and -200 below, 3072 above
        (RenderParams(preset="bone"), {}, [0, 43, 71, 99, 216, 255]),
        # manual values win over the dataset's window
        (RenderParams(window_center=0, window_width=400), {"WindowCenter": 1024, "WindowWidth": 2},
         [0, 0, 128, 255, 255, 255]),
        # no window anywhere: the frame's full range
        (RenderParams(), {}, [0, 51, 64, 76, 128, 255]),
    ],
)
def test_grey_values_after_rescale_and_window(params, extra, expected):
    assert to_display(ct_row(**extra), params)[0].tolist() == expected


def test_monochrome1_is_inverted():
    ds = ct_row(PhotometricInterpretation="MONOCHROME1")
    assert to_display(ds, RenderParams(window_center=0, window_width=400))[0].tolist() == [255, 255, 127, 0, 0, 0]


def test_voi_lut_sequence_is_applied_when_no_window_is_given():
    from pydicom.dataset import Dataset

    ds = ct_row(RescaleSlope=1, RescaleIntercept=0)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # four entries, first maps value 0, 8-bit output
    item.LUTData = [0, 100, 200, 255]
    ds.VOILUTSequence = [item]
    ds.PixelData = np.array([0, 1, 2, 3, 4, 5], dtype=np.uint16).tobytes()
    assert to_display(ds)[0].tolist() == [0, 100, 200, 255, 255, 255]


@pytest.mark.parametrize("compressed",
                         ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_losslessly_compressed_input_renders_like_the_uncompressed_one(compressed):
    reference = to_display(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    assert np.array_equal(to_display(pydicom.dcmread(get_testdata_file(compressed))), reference)
    assert reference.std() > 10  # a real picture, not a flat one


def test_jpeg2000_ct_renders_a_png_of_the_asked_size():
    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    image = Image.open(io.BytesIO(render(ds, RenderParams(size=256))))
    assert image.format == "PNG" and image.size == (256, 256) and image.mode == "L"


@pytest.mark.parametrize("name", ["SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm"])
def test_colour_images_come_out_rgb(name):
    display = to_display(pydicom.dcmread(get_testdata_file(name)))
    assert display.shape == (100, 100, 3)
    red = display[5, 50].astype(int)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15  # the test image's top band is red


def test_multiframe_frame_selection():
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    first, second = to_display(ds, RenderParams(frame=0)), to_display(ds, RenderParams(frame=1))
    assert first[5, 50].tolist() == [255, 0, 0] and second[5, 50].tolist() == [0, 255, 255]
    with pytest.raises(RenderError):
        to_display(ds, RenderParams(frame=2))


def test_jpeg_output():
    data = render(ct_row(), RenderParams(fmt="jpeg"))
    assert data[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize("kwargs", [{"preset": "nope"}, {"size": 0}, {"fmt": "gif"},
                                    {"window_center": 0, "window_width": 0}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(RenderError):
        RenderParams(**kwargs)


def test_presets_cover_the_usual_windows():
    assert {"lung", "bone", "brain", "abdomen"} <= set(PRESETS)


def test_cache_returns_what_was_put_and_stays_bounded(tmp_path):
    cache = RenderCache(tmp_path / "cache", max_bytes=10_000)
    params = RenderParams()
    assert cache.get("1.2.3", params) is None
    cache.put("1.2.3", params, b"x" * 100)
    assert cache.get("1.2.3", params) == b"x" * 100
    assert cache.get("1.2.3", RenderParams(preset="lung")) is None  # parameters are part of the key
    for i in range(50):
        cache.put(f"1.2.{i + 10}", params, b"y" * 1000)
    assert cache.total_bytes() <= 10_000
    assert cache.get("1.2.59", params) == b"y" * 1000  # the newest survive


def test_cache_versions_and_forgetting(tmp_path):
    cache = RenderCache(tmp_path / "cache")
    cache.put("1.2.3", RenderParams(), b"old", version="sha-a")
    assert cache.get("1.2.3", RenderParams(), version="sha-b") is None  # the object was replaced
    cache.forget("1.2.3")
    assert cache.get("1.2.3", RenderParams(), version="sha-a") is None
