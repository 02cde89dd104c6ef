"""HC18 loader (fixture in the official outline format; real files when present), phantom,
splits."""

import shutil

import numpy as np
import pytest
from conftest import FIXTURES
from PIL import Image
from skimage.draw import ellipse

from lus_common.config.paths import dataset_dir
from lus_common.data.hc18 import fill_outline, load_hc18
from lus_common.data.sets import split_by_group
from lus_common.evaluation.biometry import head_circumferences
from lus_common.phantoms import fetal_head_phantom


def test_outline_fixture_is_filled_and_hc_recovered():
    data = load_hc18(FIXTURES / "hc18_outline", image_size=128)
    assert len(data) == 3 and data.images.shape == (3, 128, 128) and not data.synthetic
    assert data.groups == ["000", "001", "001"]  # 001_2HC belongs to subject 001
    # The filled outline is a solid ellipse: its fitted circumference matches the CSV within 2 %.
    hc = head_circumferences(data.masks, data.spacing_mm)
    np.testing.assert_allclose(hc, data.hc_mm, rtol=0.02)


def test_fill_outline_matches_solid_ellipse():
    solid = np.zeros((100, 140), bool)
    rr, cc = ellipse(50, 70, 30, 50, shape=solid.shape)
    solid[rr, cc] = True
    from skimage.segmentation import find_boundaries

    filled = fill_outline(find_boundaries(solid, mode="inner")).astype(bool)
    assert (filled & solid).sum() / (filled | solid).sum() > 0.99


def test_fill_outline_of_a_head_cut_by_the_border():
    """Three released HC18 heads leave the frame (186, 346, 787): their outline is open there."""
    from skimage.draw import ellipse_perimeter

    solid = np.zeros((100, 140), bool)
    rr, cc = ellipse(30, 70, 45, 50, shape=solid.shape)  # the top of the head is out of the image
    solid[rr, cc] = True
    outline = np.zeros_like(solid)
    rr, cc = ellipse_perimeter(30, 70, 45, 50, shape=solid.shape)
    outline[rr, cc] = True
    from scipy import ndimage

    # Hole filling alone leaves the ring: the contour is not closed inside the image.
    assert ndimage.binary_fill_holes(outline).sum() < 0.2 * solid.sum()
    filled = fill_outline(outline).astype(bool)
    assert (filled & solid).sum() / (filled | solid).sum() > 0.97


def test_filled_mask_files_are_accepted(tmp_path):
    root = tmp_path / "hc18"
    shutil.copytree(FIXTURES / "hc18_outline", root)
    outline = np.asarray(Image.open(root / "training_set" / "000_HC_Annotation.png"))
    rgb = np.repeat((fill_outline(outline > 127) * 255).astype(np.uint8)[..., None], 3, -1)
    Image.fromarray(rgb).save(root / "training_set" / "000_HC_Mask.png")
    (root / "training_set" / "000_HC_Annotation.png").unlink()
    a = load_hc18(root, image_size=64)
    b = load_hc18(FIXTURES / "hc18_outline", image_size=64)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_mask_size_mismatch_is_a_clear_error(tmp_path):
    root = tmp_path / "hc18"
    shutil.copytree(FIXTURES / "hc18_outline", root)
    Image.new("L", (100, 50)).save(root / "training_set" / "001_HC_Annotation.png")
    with pytest.raises(ValueError, match="001_HC.png is 200x135 but its mask is 100x50"):
        load_hc18(root, image_size=64)


def test_missing_data_directory_says_what_to_do(empty_data_dir):
    with pytest.raises(FileNotFoundError, match="LUS_DATA_DIR.*lus data fetch hc18.*synthetic"):
        dataset_dir("hc18")


def test_real_hc18_loads_and_circumference_matches_csv(real_data):
    data = load_hc18(image_size=512, limit=30)
    assert data.images.shape[1:] == (512, 512) and len(data) >= 30
    assert (
        0.25 < data.masks.mean() < 0.6 or 0.01 < data.masks.mean()
    )  # heads fill part of the image
    error = np.abs(head_circumferences(data.masks, data.spacing_mm) - data.hc_mm)
    assert np.mean(error) < 1.5, f"mean HC error {np.mean(error):.2f} mm from the released masks"


def test_phantom_is_deterministic_and_exact():
    a, b, c = (
        fetal_head_phantom(4, 128, 3),
        fetal_head_phantom(4, 128, 3),
        fetal_head_phantom(4, 128, 4),
    )
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.synthetic and a.label == "SYNTHETIC phantom"
    hc = head_circumferences(
        fetal_head_phantom(6, 256, 0).masks, fetal_head_phantom(6, 256, 0).spacing_mm
    )
    np.testing.assert_allclose(hc, fetal_head_phantom(6, 256, 0).hc_mm, rtol=0.02)


def test_phantom_skull_brighter_than_fluid():
    d = fetal_head_phantom(3, 256, 1)
    from scipy import ndimage

    for img, m in zip(d.images, d.masks.astype(bool)):
        ring = m & ~ndimage.binary_erosion(m, iterations=3)
        outside = ~ndimage.binary_dilation(m, iterations=15) & (img > 0)
        assert img[ring].mean() > img[outside].mean() + 0.2


def test_split_is_disjoint_by_subject():
    groups = ["a", "a", "b", "c", "c", "c", "d", "e", "f", "g"]
    train, test = split_by_group(groups, 0.3, seed=0)
    assert set(train) | set(test) == set(range(10)) and not set(train) & set(test)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert len(test) >= 3


def test_truncated_image_is_named(tmp_path):
    """A truncated PNG must not stop a run with PIL's bare "image file is truncated"."""
    root = tmp_path / "hc18"
    shutil.copytree(FIXTURES / "hc18_outline", root)
    path = root / "training_set" / "001_HC.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"Cannot read the image .*001_HC\.png.*truncated"):
        load_hc18(root, image_size=64)


def test_fingerprint_names_pixels_masks_and_measurements():
    d = fetal_head_phantom(4, 32, 0)
    fp = d.fingerprint()
    assert fp == fetal_head_phantom(4, 32, 0).fingerprint() and len(fp) == 12
    assert fetal_head_phantom(4, 32, 1).fingerprint() != fp  # other images
    d.hc_mm = d.hc_mm + 1.0  # the same pixels with other reference circumferences (a new CSV)
    assert d.fingerprint() != fp
    assert d.subset([0, 1]).fingerprint() != d.fingerprint()
