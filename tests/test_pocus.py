"""POCUS clip loader: names, patients, frame sampling on clips written here with PyAV in every
container the release uses, bad files, grouped folds, and the real clips when present."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from lus_common.data import pocus
from lus_common.data.pocus import (
    DIAGNOSES,
    diagnosis_of,
    group_folds,
    list_pocus,
    load_pocus,
    patient_from_name,
    patient_ids,
    read_clip,
)
from lus_common.phantoms import lung

# suffix -> (codec, pixel format, frames per second, frame count, encoder options); frame k is a
# uniform grey 10 * k, 48 x 32 pixels (not square, so the centre crop is exercised).
CONTAINERS = {
    ".mp4": ("libx264", "yuv420p", 10, 20, {"qp": "0"}),
    ".avi": ("mpeg4", "yuv420p", 15, 24, {"qscale": "1"}),
    ".mpeg": ("mpeg2video", "yuv420p", 25, 25, {"qscale": "1"}),  # MPEG-2 allows 25, not 10
    ".gif": ("gif", "gray", 10, 16, {}),
    ".mov": ("libx264", "yuv420p", 12, 20, {"qp": "0"}),
}
NAMES = {  # one file per container, every class prefix and case
    ".mp4": "Cov_fixture_clip",
    ".avi": "Pneu_northumbria_fixture_vid1",
    ".mpeg": "Reg_pat1Image_000001",
    ".gif": "vir-fixture",
    ".mov": "REG_recommendations_fixture",
}
GREY_TOLERANCE = 3 / 255  # codec and limited-range rounding


def write_clip(path: Path, suffix: str, width: int = 48, height: int = 32, fmt=None) -> Path:
    """A clip of uniform frames, frame k at grey level 10 * k (see CONTAINERS)."""
    codec, pix_fmt, rate, n, options = CONTAINERS[suffix]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for k in range(n):
            grey = np.full((height, width), 10 * k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(grey, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def expected_index(rate: int, n: int, fps: int = 3) -> list[int]:
    """Frames picked at ``fps``: for each sampling time k / fps within the clip (k / fps <= the
    last frame's time (n - 1) / rate), the first frame at or after it, ceil(k * rate / fps)."""
    last_k = (n - 1) * fps // rate
    return [-(-k * rate // fps) for k in range(last_k + 1)]


@pytest.fixture
def fixture_root(tmp_path):
    """A POCUS folder with one clip per container, and two images (one with a black border)."""
    root = tmp_path / "pocus"
    videos, images = root / pocus.VIDEO_DIR, root / pocus.IMAGE_DIR
    videos.mkdir(parents=True)
    images.mkdir(parents=True)
    for suffix, name in NAMES.items():
        write_clip(videos / f"{name}{suffix}", suffix)
    framed = np.zeros((60, 80), np.uint8)
    framed[10:40, 20:44] = 200  # content 24 wide x 30 high inside black
    Image.fromarray(framed).save(images / "Pneu_framed.png")
    Image.fromarray(np.full((40, 40), 120, np.uint8)).save(images / "Reg_plain.JPG")
    (videos / "notes.txt").write_text("not a clip")  # ignored: not a video suffix
    return root


# ---------------------------------------------------------------- names and patients


def test_diagnoses_are_the_phantoms():
    assert DIAGNOSES == lung.DIAGNOSES == ("healthy", "COVID-19", "pneumonia")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Cov-Atlas+(45).gif", ("COVID-19", "COVID-19")),
        ("cov_combatting_image4.mp4", ("COVID-19", "COVID-19")),
        ("Pneu_Avi_Video_001.mp4", ("pneumonia", "bacterial pneumonia")),
        ("pneu-radiopaeda.mp4", ("pneumonia", "bacterial pneumonia")),
        ("Vir_whitelung_h1n1.mp4", ("pneumonia", "viral pneumonia")),
        ("VIR_liftl_H1N1_case2_clip1", ("pneumonia", "viral pneumonia")),
        ("Reg_pat1Image_132943.mpeg", ("healthy", "healthy")),
        ("reg-NormalLungs.MP4", ("healthy", "healthy")),
    ],
)
def test_prefix_rule(name, expected):
    assert diagnosis_of(name) == expected


@pytest.mark.parametrize(
    "name", ["Covid_clip.mp4", "Regular-lung.mp4", "Bac_x.mp4", "clip.mp4", "Cov.mp4", "_Cov_a"]
)
def test_unknown_prefix_names_the_file(name):
    with pytest.raises(ValueError, match=f"'{name}'.*Cov.*Pneu.*Vir.*Reg"):
        diagnosis_of(name)


def test_patient_rule_on_real_names():
    pat1 = [f"Reg_pat1Image_{t}.mpeg" for t in (132943, 133043, 133138, 133232, 133327, 133410)]
    pat2 = ["Reg_pat2Image_133824.mpeg", "Reg_pat2Image_133952.mpeg"]
    others = [
        "Reg_Image_181602_trimmed_crop.mp4",
        "Pneu_northumbria_0409_set1_vid1.avi",
        "Pneu_northumbria_0409_set1_vid2.avi",
        "Cov-Atlas-Day+1.mp4",
        "Cov_patient_zero.mp4",  # "pat" without a number is no patient token
        "Reg_compat2_clip.mp4",  # nor is "pat2" inside a word
    ]
    assert {patient_from_name(n) for n in pat1} == {"Reg_pat1"}
    assert patient_from_name("Reg_pat2Image_133824") == "Reg_pat2"
    patients = patient_ids(pat1 + pat2 + others)
    assert patients[:6] == ["Reg_pat1"] * 6 and patients[6:8] == ["Reg_pat2"] * 2
    assert patients[8:] == [Path(n).stem for n in others]  # each its own patient
    assert len(set(patients)) == 2 + len(others)


def test_csv_patient_ids_link_clips_transitively():
    names = ["Cov_a", "Cov_b", "Reg_pat3Image_1", "Reg_pat3Image_2", "Reg_c", "Reg_d"]
    # a-b share CSV 12; pat3 clips share a name key and pat3Image_2 shares CSV 5 with Reg_c
    ids = [12, 12.0, None, 5, "5", float("nan")]
    assert patient_ids(names, ids) == ["csv12", "csv12", "csv5", "csv5", "csv5", "Reg_d"]
    with pytest.raises(ValueError, match="2 CSV ids for 6 clips"):
        patient_ids(names, [1, 2])


def test_csv_rows_shifted_one_cell_are_read_shifted(fixture_root):
    header = "Filename,Framerate,Resolution,Length (frames),Gender,Age,Patient ID / Name,Next"
    rows = [
        "Cov_fixture_clip,30,48x32,20,m,40,17,",
        "Pneu_northumbria_fixture_vid1,,15,48x32,24,m,40,17",  # shifted: rate 15, patient 17
        "Reg_pat1Image_000001,25,48x32,25,,,3,",
        "REG_recommendations_fixture,,,,,,,",  # no patient, no rate
    ]
    (fixture_root / pocus.CSV_NAME).write_text("\n".join([header, *rows]) + "\n")
    table = list_pocus(fixture_root).set_index("video")
    assert table.loc["Pneu_northumbria_fixture_vid1", ["csv_fps", "csv_patient"]].tolist() == [
        15.0,
        17.0,
    ]
    assert table.loc["Cov_fixture_clip", "csv_fps"] == 30.0
    assert table.loc["Cov_fixture_clip", "patient"] == "csv17"
    assert table.loc["Pneu_northumbria_fixture_vid1", "patient"] == "csv17"
    assert table.loc["Reg_pat1Image_000001", "patient"] == "csv3"
    assert table.loc["REG_recommendations_fixture", "patient"] == "REG_recommendations_fixture"
    assert np.isnan(table.loc["vir-fixture", "csv_fps"])  # not in the CSV
    (fixture_root / pocus.CSV_NAME).write_text("Name,Rate\nCov_fixture_clip,30\n")
    with pytest.raises(ValueError, match="no column 'Filename'"):
        list_pocus(fixture_root)


# ---------------------------------------------------------------- decoding and sampling


@pytest.mark.parametrize("suffix", list(CONTAINERS))
def test_each_container_samples_the_right_frames(tmp_path, suffix):
    _, _, rate, n, _ = CONTAINERS[suffix]
    path = write_clip(tmp_path / f"clip{suffix}", suffix)
    clip = read_clip(path, fps=3)
    expected = expected_index(rate, n)
    assert clip.rate_source == "timestamps"
    assert clip.index.tolist() == expected
    np.testing.assert_allclose(clip.times, np.array(expected) / rate, atol=1e-3)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (len(expected), 32, 48)
    grey = clip.frames.reshape(len(expected), -1).mean(1)
    np.testing.assert_allclose(grey, 10 * np.array(expected), atol=3)
    every = read_clip(path, fps=None)
    assert every.index.tolist() == list(range(n))
    np.testing.assert_allclose(every.frames.mean((1, 2)), 10 * np.arange(n), atol=3)
    capped = read_clip(path, fps=3, max_frames=2)
    assert capped.index.tolist() == expected[:2]


def test_expected_counts_per_container():
    # 3 samples per second over each clip's span: (n - 1) / rate seconds
    counts = {s: len(expected_index(r, n)) for s, (_, _, r, n, _) in CONTAINERS.items()}
    assert counts == {".mp4": 6, ".avi": 5, ".mpeg": 3, ".gif": 5, ".mov": 5}
    assert expected_index(10, 20) == [0, 4, 7, 10, 14, 17]
    assert expected_index(30, 31) == [0, 10, 20, 30]  # k / 3 falls on a frame exactly


def test_faster_sampling_than_the_clip_takes_every_frame_once(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", ".mp4")  # 10 frames per second
    assert read_clip(path, fps=25).index.tolist() == list(range(20))
    assert read_clip(path, fps=5).index.tolist() == list(range(0, 20, 2))


def test_without_timestamps_the_stream_rate_is_used(tmp_path):
    # a raw H.264 stream carries no timestamps; FFmpeg guesses its rate (10)
    path = write_clip(tmp_path / "clip.h264", ".mp4", fmt="h264")
    clip = read_clip(path, fps=3)
    assert clip.rate_source == "stream rate"
    assert clip.index.tolist() == expected_index(10, 20)
    np.testing.assert_allclose(
        clip.frames.mean((1, 2)), 10 * np.array(expected_index(10, 20)), atol=3
    )


def test_load_fixture_folder(fixture_root):
    d = load_pocus(fixture_root, image_size=16)
    counts = Counter(d.videos)
    for suffix, name in NAMES.items():
        _, _, rate, n, _ = CONTAINERS[suffix]
        assert counts[name] == len(expected_index(rate, n)), name
        picked = np.array([v == name for v in d.videos])
        values = d.frames[picked].reshape(picked.sum(), -1)
        np.testing.assert_allclose(
            values.mean(1), 10 * np.array(expected_index(rate, n)) / 255, atol=GREY_TOLERANCE
        )
        assert values.std(1).max() < 1e-3  # uniform frames stay uniform through crop and resize
    assert counts["Pneu_framed"] == counts["Reg_plain"] == 1
    assert d.frames.shape == (sum(counts.values()), 16, 16) and d.frames.dtype == np.float32
    assert len(d) == 24 + 2 and d.source == "pocus" and not d.synthetic
    assert d.label == "POCUS (real)"
    by_video = {v: (lab, fine) for v, lab, fine in zip(d.videos, d.labels, d.fine_labels)}
    assert by_video["Cov_fixture_clip"] == (1, "COVID-19")
    assert by_video["vir-fixture"] == (2, "viral pneumonia")
    assert by_video["Pneu_northumbria_fixture_vid1"] == (2, "bacterial pneumonia")
    assert by_video["REG_recommendations_fixture"] == (0, "healthy")
    assert set(d.patients) == set(d.videos) - {"Reg_pat1Image_000001"} | {"Reg_pat1"}
    assert d.files[0].startswith("pocus_videos/convex/") and d.files[-1].endswith(".JPG")
    assert d.info["failures"] == [] and d.info["fps"] == 3.0 and d.info["image_size"] == 16
    assert d.info["rate_source"]["Reg_plain"] == "image"
    assert set(d.info["rate_source"].values()) == {"timestamps", "image"}
    no_images = load_pocus(fixture_root, image_size=16, include_images=False)
    assert len(no_images) == 24 and not any(f.startswith("pocus_images") for f in no_images.files)


def test_content_crop_cuts_the_black_border(fixture_root):
    centre = load_pocus(fixture_root, image_size=12, files=["Pneu_framed.png"])
    content = load_pocus(fixture_root, image_size=12, files=["Pneu_framed"], crop="content")
    # centre: the 60 x 60 middle square is a quarter content (24 x 30 of 3600 px)
    assert centre.frames.mean() == pytest.approx(200 / 255 * 24 * 30 / 3600, abs=0.03)
    np.testing.assert_allclose(content.frames, 200 / 255, atol=1e-4)  # all content
    with pytest.raises(ValueError, match="Unknown crop 'middle'"):
        load_pocus(fixture_root, crop="middle")


def test_files_subset_subset_and_fingerprint(fixture_root):
    a = load_pocus(fixture_root, image_size=16, files=["Cov_fixture_clip.mp4", "vir-fixture"])
    assert set(a.videos) == {"Cov_fixture_clip", "vir-fixture"} and len(a) == 6 + 5
    b = load_pocus(fixture_root, image_size=16, files=["vir-fixture", "Cov_fixture_clip"])
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 12
    vir = a.subset(np.flatnonzero(np.array(a.videos) == "vir-fixture"))
    assert load_pocus(fixture_root, image_size=16, files=["vir-fixture"]).fingerprint() == (
        vir.fingerprint()
    )
    assert load_pocus(fixture_root, image_size=20, files=["vir-fixture"]).fingerprint() != (
        vir.fingerprint()
    )
    part = a.subset([1, 7])
    assert len(part) == 2 and part.videos == [a.videos[1], a.videos[7]]
    assert part.frame_index.tolist() == [a.frame_index[1], a.frame_index[7]]
    np.testing.assert_array_equal(part.frames, a.frames[[1, 7]])
    assert part.fingerprint() != a.fingerprint()
    changed = a.subset(np.arange(len(a)))
    assert changed.fingerprint() == a.fingerprint()
    changed.frames[0, 0, 0] += 0.5
    assert changed.fingerprint() != a.fingerprint()
    with pytest.raises(ValueError, match="Unknown POCUS file 'Cov_missing.mp4'"):
        load_pocus(fixture_root, files=["Cov_missing.mp4"])


# ---------------------------------------------------------------- bad input


def test_corrupt_files_raise_naming_them_or_are_skipped(fixture_root, tmp_path):
    videos = fixture_root / pocus.VIDEO_DIR
    (videos / "Cov_random_bytes.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    whole = write_clip(tmp_path / "whole.mp4", ".mp4").read_bytes()
    (videos / "Reg_truncated.mp4").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(OSError, match=r"Cannot read the video .*Cov_random_bytes\.mp4"):
        load_pocus(fixture_root, image_size=16)
    with pytest.raises(OSError, match=r"Cannot read the video .*Reg_truncated\.mp4"):
        read_clip(videos / "Reg_truncated.mp4")
    d = load_pocus(fixture_root, image_size=16, on_error="skip")
    failed = [f for f, _ in d.info["failures"]]
    assert failed == [
        "pocus_videos/convex/Cov_random_bytes.mp4",
        "pocus_videos/convex/Reg_truncated.mp4",
    ]
    assert all("Cannot read the video" in reason for _, reason in d.info["failures"])
    assert set(d.videos) == set(NAMES.values()) | {"Pneu_framed", "Reg_plain"} and len(d) == 26
    with pytest.raises(ValueError, match="Unknown on_error value 'ignore'"):
        load_pocus(fixture_root, on_error="ignore")


def test_unreadable_image_and_unknown_prefix(fixture_root):
    (fixture_root / pocus.IMAGE_DIR / "Cov_broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(OSError, match="Cov_broken.png"):
        load_pocus(fixture_root, image_size=8)
    (fixture_root / pocus.VIDEO_DIR / "Bac_unknown.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="'Bac_unknown.mp4'"):
        load_pocus(fixture_root, image_size=8)
    d = load_pocus(fixture_root, image_size=8, on_error="skip")
    assert [f for f, _ in d.info["failures"]] == [
        "pocus_videos/convex/Bac_unknown.mp4",
        "pocus_images/convex/Cov_broken.png",
    ]
    assert len(d) == 26


def test_file_without_video_stream(tmp_path):
    path = tmp_path / "Reg_sound_only.mov"
    with av.open(str(path), "w") as container:  # audio only
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(OSError, match="Reg_sound_only.mov: the file has no video stream"):
        read_clip(path)


def test_missing_or_wrong_folder(tmp_path, empty_data_dir):
    with pytest.raises(FileNotFoundError, match="Dataset 'pocus' not found.*LUS_DATA_DIR"):
        load_pocus()
    with pytest.raises(FileNotFoundError, match="not a POCUS folder"):
        load_pocus(tmp_path)
    (tmp_path / pocus.VIDEO_DIR).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No POCUS file"):
        load_pocus(tmp_path)


# ---------------------------------------------------------------- grouped folds


def test_group_folds_keep_groups_whole_and_balance_classes():
    rng = np.random.default_rng(3)
    patients = np.repeat([f"p{i}" for i in range(40)], rng.integers(1, 6, 40))
    videos = np.array([f"{p}_v{i % 2}" for i, p in enumerate(patients)])
    labels = np.array([int(p[1:]) % 3 for p in patients])  # one class per patient
    for groups in (patients, videos):
        folds = group_folds(groups, k=5, seed=0, stratify=labels)
        assert sorted(set(folds)) == [0, 1, 2, 3, 4]
        for f in range(5):
            test, train = folds == f, folds != f
            assert not set(videos[test]) & set(videos[train])
            if groups is patients:
                assert not set(patients[test]) & set(patients[train])
            share = np.bincount(labels[test], minlength=3) / np.bincount(labels, minlength=3)
            assert np.all(np.abs(share - 0.2) < 0.12), share  # each class near a fifth per fold
    assert np.array_equal(group_folds(patients, 5, 1, labels), group_folds(patients, 5, 1, labels))
    sizes = np.bincount(group_folds(patients, 4, 0))
    assert sizes.max() - sizes.min() <= 5  # largest group has 5 items
    with pytest.raises(ValueError, match="at least k groups"):
        group_folds(["a", "a", "b"], k=3, seed=0)
    with pytest.raises(ValueError, match="stratify has 2 entries for 3 items"):
        group_folds(["a", "b", "c"], k=2, seed=0, stratify=[0, 1])


# ---------------------------------------------------------------- the real clips


@pytest.mark.realdata
def test_real_counts_match_the_readme(real_pocus):
    table = list_pocus(real_pocus)
    videos, images = table[table.kind == "video"], table[table.kind == "image"]
    prefix = lambda t: Counter(Path(f).name.split("_")[0].split("-")[0].lower() for f in t.file)
    assert prefix(videos) == {"cov": 27, "pneu": 36, "vir": 2, "reg": 56}
    assert Counter(videos.diagnosis) == {"COVID-19": 27, "pneumonia": 38, "healthy": 56}
    assert Counter(videos.fine_label)["viral pneumonia"] == 2
    assert prefix(images) == {"cov": 5, "pneu": 14, "reg": 10}
    assert Counter(images.diagnosis) == {"COVID-19": 5, "pneumonia": 14, "healthy": 10}
    suffixes = Counter(Path(f).suffix.lower() for f in videos.file)
    assert suffixes == {".mp4": 65, ".avi": 30, ".mpeg": 24, ".gif": 1, ".mov": 1}
    assert table.video.is_unique and table.attrs["failures"] == []
    assert table.csv_patient.notna().all() and table.csv_fps.notna().all()


@pytest.mark.realdata
def test_real_patients(real_pocus):
    table = list_pocus(real_pocus).set_index("video")
    patient = table.patient
    pat1 = [v for v in table.index if v.startswith("Reg_pat1Image_")]
    assert len(pat1) == 6 and patient[pat1].nunique() == 1
    assert patient[[f"Cov-Atlas-Day+{d}" for d in (1, 2, 3, 4)]].nunique() == 1  # from the CSV
    # the two shifted CSV rows put LITFL case 3's healthy clips with its pneumonia clips
    assert patient["Reg_liftl_pneucase3_clip1"] == patient["Pneu_liftl_pneu_case3_clip3"]
    assert patient["Reg_liftl_case3_clip2"] == patient["Pneu_liftl_pneu_case3_clip5"]
    assert patient["Reg-Atlas-alines"] != patient["Reg_liftl_case3_clip2"]  # not the shifted 40
    videos = table[table.kind == "video"]
    assert videos.patient.nunique() == 74 and table.patient.nunique() == 101
    per_class = videos.groupby("diagnosis").patient.nunique().to_dict()
    assert per_class == {"COVID-19": 9, "healthy": 32, "pneumonia": 35}
    folds = group_folds(videos.patient, k=5, seed=0, stratify=videos.label)
    for f in range(5):
        test = folds == f
        assert not set(videos.patient[test]) & set(videos.patient[~test])
        assert not set(videos.index[test]) & set(videos.index[~test])
        assert set(videos.label[test]) == {0, 1, 2}


@pytest.mark.realdata
def test_every_real_clip_opens(real_pocus):
    table = list_pocus(real_pocus, include_images=False)
    failed, sizes = [], []
    for row in table.itertuples():
        try:
            first = read_clip(real_pocus / row.file, max_frames=1)
        except OSError as exc:
            failed.append((row.file, str(exc)))
            continue
        assert first.index.tolist() == [0] and first.rate_source == "timestamps", row.file
        sizes.append(first.frames.shape[1:])
    assert failed == [] and len(sizes) == 121
    assert min(min(s) for s in sizes) >= 100  # every clip at least 100 px on its shorter side


@pytest.mark.realdata
def test_real_handful_loads(real_pocus):
    names = [
        "Cov-Atlas+(45).gif",
        "Reg_recommendations_alines_mov1.mov",
        "Reg_pat1Image_132943.mpeg",
        "Pneu_northumbria_0409_set1_vid1.avi",
        "Vir_whitelung_h1n1.mp4",
        "Cov_Oliviera_2020_Fig4A.jpg",
    ]
    d = load_pocus(real_pocus, image_size=64, max_frames_per_video=3, files=names)
    assert d.frames.shape == (5 * 3 + 1, 64, 64) and d.info["failures"] == []
    assert Counter(d.labels.tolist()) == {1: 4, 0: 6, 2: 6}
    assert d.frame_index.tolist()[:3] == [0, 4, 7]  # the 10 fps gif
    assert d.frame_index.tolist()[6:9] == [0, 9, 17]  # the 25 fps mpeg
    assert d.frame_index.tolist()[9:12] == [0, 6, 12]  # the 18 fps mov
    assert 0 <= d.frames.min() and d.frames.max() <= 1
    assert d.frames.reshape(len(d), -1).std(1).min() > 0.05  # real images, not blank
