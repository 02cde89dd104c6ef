"""POCUS lung-ultrasound clips, convex probe (Born et al., POCOVID-Net), for study 5.

Layout (``<data_dir>/pocus``, as in the ``covid19_ultrasound`` repository)::

    pocus_videos/convex/*     clips: mp4, avi, mpeg, gif, mov (121 in the release used here)
    pocus_images/convex/*     still images: png, jpg (29); each is a one-frame "video"
    dataset_metadata.csv      one row per file; ``Filename`` is the file name without extension

**Class** (:func:`diagnosis_of`): the file-name prefix before the first ``-`` or ``_``,
case-insensitive: ``Cov`` COVID-19, ``Pneu`` bacterial pneumonia, ``Vir`` viral pneumonia (both
pneumonias are ``"pneumonia"`` of :data:`DIAGNOSES`, as in paper 5), ``Reg`` healthy.

**Patients** (:func:`patient_ids`): clips are one patient when they are linked, directly or through
other clips, by

1. the name (:func:`patient_from_name`): a ``pat<N>`` token after a separator marks a patient, and
   the name up to it is the key (``Reg_pat1Image_132943`` -> ``Reg_pat1``, six clips of one person);
   any other name is its own patient (the video id); or
2. the CSV's ``Patient ID / Name`` column, when the file has a row with a number there. The CSV
   knows more than the names (``Cov-Atlas-Day+1..4`` are one patient, so are the five
   ``Cov_combatting_Image*`` clips, the five ``volpecelli`` clips and ``Reg_Image_182106_crop``
   with ``Reg_pat1Image_*``). Two rows (``Reg_liftl_pneucase3_clip1``, ``Reg_liftl_case3_clip2``)
   are shifted one cell to the right from ``Framerate`` on (``Framerate`` empty, the rate in
   ``Resolution``, ``WxH`` in ``Length (frames)``); such rows are read one cell to the right, which
   puts them with the bacterial-pneumonia clips 3-5 of the same LITFL case (CSV patient 7).

A linked group with a CSV id is called ``csv<smallest id>``; one without keeps its name key. One
patient may hold clips of different classes (that LITFL case has healthy and pneumonic clips).

**Frames** (:func:`read_clip`): decoded with PyAV and converted by FFmpeg to grey (luminance,
0-255 full range). At ``fps`` samples per second (default 3, as POCOVID-Net), sampling time
``k / fps`` (k = 0, 1, ...) takes the first frame at or after it (1 ms tolerance), seconds counted
from the first decoded frame. Frame times come from the frame timestamps (pts x time base); when
the container gives none (a raw H.264 stream), from the frame number and the stream's frame rate
(FFmpeg's guess, then the average rate, then the base rate); failing that, from the
CSV ``Framerate``; failing that every frame is taken. ``info["rate_source"]`` says which, per
video. ``max_frames_per_video`` stops after that many samples.

**Size**: every frame becomes ``image_size`` x ``image_size`` by a centre square crop (side = the
shorter side) and :func:`skimage.transform.resize` with anti-aliasing, one clip at a time (the
frames of a clip as one array). ``crop="content"`` first cuts the clip to the bounding box of its
non-black pixels (any frame brighter than 8/255), then takes the centred square of that box.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import pandas as pd

from lus_common.config.paths import dataset_dir
from lus_common.config.registry import lookup
from lus_common.data.sets import fingerprint, group_folds, read_grey
from lus_common.phantoms.lung import DIAGNOSES

__all__ = [
    "DIAGNOSES",
    "PREFIXES",
    "Clip",
    "FrameSet",
    "diagnosis_of",
    "group_folds",
    "list_pocus",
    "load_pocus",
    "patient_from_name",
    "patient_ids",
    "read_clip",
]

VIDEO_DIR = Path("pocus_videos") / "convex"
IMAGE_DIR = Path("pocus_images") / "convex"
CSV_NAME = "dataset_metadata.csv"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mpeg", ".mpg", ".gif", ".mov", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: File-name prefix (lower case) -> (diagnosis of :data:`DIAGNOSES`, fine label).
PREFIXES: dict[str, tuple[str, str]] = {
    "cov": ("COVID-19", "COVID-19"),
    "pneu": ("pneumonia", "bacterial pneumonia"),
    "vir": ("pneumonia", "viral pneumonia"),
    "reg": ("healthy", "healthy"),
}
ON_ERROR = ("raise", "skip")
CROPS = ("centre", "content")
TIME_TOLERANCE_S = 1e-3  # a frame this close before a sampling time counts as at it
CONTENT_THRESHOLD = 8  # grey level (0-255) above which a pixel is content, for crop="content"

_PREFIX = re.compile(r"^([a-z]+)[-_ ]", re.IGNORECASE)
_PATIENT = re.compile(r"(?:^|[-_ ])pat(\d+)(?![0-9])", re.IGNORECASE)
_RESOLUTION = re.compile(r"^\s*\d+\s*x\s*\d+\s*$")


def diagnosis_of(name: str) -> tuple[str, str]:
    """The class of a POCUS file from its name.

    Args:
        name: a file name or stem, e.g. ``"Vir_whitelung_h1n1.mp4"``.

    Returns:
        ``(diagnosis, fine label)``, e.g. ``("pneumonia", "viral pneumonia")``; the diagnosis is
        one of :data:`DIAGNOSES`.

    Raises:
        ValueError: the name does not start with a known prefix; the message names the file.
    """
    match = _PREFIX.match(Path(name).name)
    if match is None or match.group(1).lower() not in PREFIXES:
        raise ValueError(
            f"Cannot tell the class of '{name}': a POCUS file name must start with one of "
            f"{[p.capitalize() for p in PREFIXES]} (any case) followed by '-' or '_'."
        )
    return PREFIXES[match.group(1).lower()]


def patient_from_name(name: str) -> str:
    """The patient key a file name shows, else the name itself (its own patient).

    Args:
        name: a file stem (or name; the extension is dropped), e.g. ``"Reg_pat1Image_132943"``.

    Returns:
        The name up to a ``pat<N>`` token that follows a separator (``"Reg_pat1"``), or the stem.
    """
    stem = _stem(name)
    match = _PATIENT.search(stem)
    return stem[: match.end()] if match else stem


def patient_ids(names: Sequence[str], csv_ids: Sequence | None = None) -> list[str]:
    """Patient per clip: the groups linked by the name key or by a shared CSV patient id.

    Args:
        names: one stem per clip (video ids).
        csv_ids: the CSV patient id per clip (a number, or None/NaN where unknown); default none.

    Returns:
        One patient id per clip: ``"csv<smallest CSV id in the group>"`` for a group with a CSV id,
        else its name key (:func:`patient_from_name`).
    """
    names = [_stem(n) for n in names]
    csv_ids = [None] * len(names) if csv_ids is None else list(csv_ids)
    if len(csv_ids) != len(names):
        raise ValueError(f"{len(csv_ids)} CSV ids for {len(names)} clips.")
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, object], int] = {}
    keys = [patient_from_name(n) for n in names]
    numbers = [_number(c) for c in csv_ids]
    for i, (key, number) in enumerate(zip(keys, numbers)):
        for link in [("name", key)] + ([("csv", int(number))] if number is not None else []):
            j = first.setdefault(link, i)
            parent[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in range(len(names)):
        members.setdefault(root(i), []).append(i)
    label: dict[int, str] = {}
    for r, idx in members.items():
        ids = [int(numbers[i]) for i in idx if numbers[i] is not None]
        label[r] = f"csv{min(ids)}" if ids else keys[idx[0]]
    return [label[root(i)] for i in range(len(names))]


class Clip(NamedTuple):
    """The sampled frames of one clip."""

    frames: np.ndarray  # uint8 (n, H, W), grey
    index: np.ndarray  # int (n,): number of each frame in decoding order
    times: np.ndarray  # float (n,): seconds from the first frame
    rate_source: str  # "timestamps", "stream rate", "csv rate" or "every frame"


def read_clip(
    path: Path,
    fps: float | None = 3.0,
    max_frames: int | None = None,
    fallback_fps: float | None = None,
) -> Clip:
    """Decode one video and keep frames at ``fps`` samples per second (module docstring).

    Args:
        path: the video file.
        fps: samples per second; None keeps every frame.
        max_frames: stop after this many kept frames (None: no cap).
        fallback_fps: frame rate to use when the container gives neither timestamps nor a rate
            (the CSV's ``Framerate``).

    Returns:
        A :class:`Clip` with grey uint8 frames.

    Raises:
        OSError: the file cannot be opened or decoded, has no video stream or no frame, or its
            frame size changes; the message names the file.
        ValueError: ``fps`` is not positive.
    """
    path = Path(path)
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive or None, got {fps}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("the file has no video stream")
            stream = container.streams.video[0]
            rate = next(
                (
                    float(r)
                    for r in (stream.guessed_rate, stream.average_rate, stream.base_rate)
                    if r is not None and float(r) > 0
                ),
                None,
            )
            frames, index, times = [], [], []
            mode, t0, t, next_k = None, 0.0, 0.0, 0
            for i, frame in enumerate(container.decode(stream)):
                if mode is None:
                    if frame.time is not None:
                        mode, t0 = "timestamps", frame.time
                    elif rate:
                        mode = "stream rate"
                    elif fallback_fps and fallback_fps > 0:
                        mode, rate = "csv rate", float(fallback_fps)
                    else:
                        mode = "every frame"
                if mode == "timestamps":
                    # a frame without a timestamp follows its predecessor by one frame interval
                    t = frame.time - t0 if frame.time is not None else t + (1 / rate if rate else 0)
                elif mode != "every frame":
                    t = i / rate
                if fps is None or mode == "every frame":
                    take = True
                elif t >= next_k / fps - TIME_TOLERANCE_S:
                    take, next_k = True, math.floor((t + TIME_TOLERANCE_S) * fps) + 1
                else:
                    take = False
                if take:
                    frames.append(frame.to_ndarray(format="gray"))
                    index.append(i)
                    times.append(t if mode != "every frame" else np.nan)
                    if max_frames is not None and len(frames) >= max_frames:
                        break
        if not frames:
            raise ValueError("no video frame could be decoded")
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"the frame size changes within the clip: {sorted(shapes)}")
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise OSError(
            f"Cannot read the video {path}: {exc}. The file is truncated, damaged or not a "
            "video FFmpeg can decode: replace it with the released file or remove it "
            "(on_error='skip' loads the others)."
        ) from exc
    return Clip(np.stack(frames), np.asarray(index, int), np.asarray(times, float), mode)


@dataclass
class FrameSet:
    """Grey frames sampled from clips, with their class, video and patient.

    Attributes:
        frames: float32 array (N, H, W) in [0, 1].
        labels: int array (N,), index into :data:`DIAGNOSES`.
        videos: video id per frame (file stem); never split frames of one video.
        patients: patient id per frame (:func:`patient_ids`).
        files: path of the source file per frame, relative to the dataset folder.
        frame_index: int array (N,), number of the frame in its clip (0 for images).
        fine_labels: finer class per frame ("bacterial pneumonia", "viral pneumonia", ...);
            default the diagnosis.
        times_s: float array (N,), seconds from the clip's first frame (NaN where unknown).
        source: ``"pocus"``.
        synthetic: False: real clips.
        info: how it was loaded: root, fps, image size, crop, ``rate_source`` per video and
            ``failures`` (list of ``(file, reason)`` skipped with ``on_error="skip"``).
    """

    frames: np.ndarray
    labels: np.ndarray
    videos: list[str]
    patients: list[str]
    files: list[str]
    frame_index: np.ndarray
    fine_labels: list[str] | None = None
    times_s: np.ndarray | None = None
    source: str = "pocus"
    synthetic: bool = False
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.frames)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.frame_index = np.asarray(self.frame_index, dtype=np.int64)
        if self.fine_labels is None:
            self.fine_labels = [DIAGNOSES[i] for i in self.labels]
        if self.times_s is None:
            self.times_s = np.full(n, np.nan)
        self.times_s = np.asarray(self.times_s, dtype=np.float64)
        if self.frames.ndim != 3:
            raise ValueError(f"frames must be (N, H, W), got shape {self.frames.shape}")
        names = ("labels", "videos", "patients", "files", "frame_index", "fine_labels", "times_s")
        for name in names:
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} frames.")
        if n and not (0 <= self.labels.min() and self.labels.max() < len(DIAGNOSES)):
            raise ValueError(f"labels must index DIAGNOSES {DIAGNOSES}, got {set(self.labels)}")

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, index) -> FrameSet:
        """The frames at ``index`` (an integer array), as a new set."""
        index = np.asarray(index, dtype=int)
        pick = lambda items: [items[i] for i in index]
        return FrameSet(
            frames=self.frames[index],
            labels=self.labels[index],
            videos=pick(self.videos),
            patients=pick(self.patients),
            files=pick(self.files),
            frame_index=self.frame_index[index],
            fine_labels=pick(self.fine_labels),
            times_s=self.times_s[index],
            source=self.source,
            synthetic=self.synthetic,
            info=dict(self.info),
        )

    def fingerprint(self) -> str:
        """A short hash of the pixels, labels, frame numbers and the video, patient and file ids:
        names this exact data in run keys (it changes with a file, the sampling or the resize)."""
        return fingerprint(
            (self.frames, self.labels, self.frame_index), (self.videos, self.patients, self.files)
        )

    @property
    def label(self) -> str:
        """Short label for figure titles: ``"POCUS (real)"`` or ``"SYNTHETIC phantom"``."""
        return "SYNTHETIC phantom" if self.synthetic else f"{self.source.upper()} (real)"


def list_pocus(
    root: Path | None = None,
    include_images: bool = True,
    use_csv: bool = True,
    on_error: str = "raise",
) -> pd.DataFrame:
    """The clips (and images) of the POCUS folder, one row each, without decoding anything.

    Args:
        root: the ``pocus`` folder; default ``<data_dir>/pocus``.
        include_images: list the still images of ``pocus_images/convex`` too.
        use_csv: take patient ids and fallback frame rates from ``dataset_metadata.csv`` when it
            is there.
        on_error: ``"raise"`` on a file with an unknown prefix, or ``"skip"`` it; skipped files
            are in ``table.attrs["failures"]`` as ``(file, reason)``.

    Returns:
        A table sorted by kind then file, with columns ``file`` (relative path), ``kind``
        (``"video"``/``"image"``), ``video`` (id), ``diagnosis``, ``fine_label``, ``label`` (index
        into :data:`DIAGNOSES`), ``patient``, ``csv_patient`` and ``csv_fps`` (NaN if unknown).

    Raises:
        FileNotFoundError: no dataset folder, or neither ``pocus_videos/convex`` nor
            ``pocus_images/convex`` in it.
        ValueError: a file name has no known class prefix (with ``on_error="raise"``).
    """
    on_error = lookup(ON_ERROR, on_error, "on_error value", error=ValueError)
    root = Path(root) if root is not None else dataset_dir("pocus")
    folders = [("video", VIDEO_DIR, VIDEO_SUFFIXES)]
    if include_images:
        folders.append(("image", IMAGE_DIR, IMAGE_SUFFIXES))
    if not any((root / d).is_dir() for _, d, _ in folders):
        raise FileNotFoundError(
            f"{root} is not a POCUS folder: expected {VIDEO_DIR}/ (clips) and {IMAGE_DIR}/ "
            f"(images) with {CSV_NAME}, as in github.com/jannisborn/covid19_ultrasound data/."
        )
    csv_rows = _read_csv(root / CSV_NAME) if use_csv else {}
    rows, failures = [], []
    for kind, folder, suffixes in folders:
        paths = sorted((root / folder).iterdir()) if (root / folder).is_dir() else []
        for path in paths:
            if not path.is_file() or path.suffix.lower() not in suffixes:
                continue
            rel = path.relative_to(root).as_posix()
            try:
                diagnosis, fine = diagnosis_of(path.name)
            except ValueError as exc:
                if on_error == "raise":
                    raise
                failures.append((rel, str(exc)))
                continue
            csv_fps, csv_patient = csv_rows.get(
                path.stem, csv_rows.get(path.stem.lower(), (None,) * 2)
            )
            rows.append(
                {
                    "file": rel,
                    "kind": kind,
                    "video": path.stem,
                    "diagnosis": diagnosis,
                    "fine_label": fine,
                    "label": DIAGNOSES.index(diagnosis),
                    "csv_patient": np.nan if csv_patient is None else csv_patient,
                    "csv_fps": np.nan if csv_fps is None else csv_fps,
                }
            )
    columns = [
        "file",
        "kind",
        "video",
        "diagnosis",
        "fine_label",
        "label",
        "csv_patient",
        "csv_fps",
    ]
    table = pd.DataFrame(rows, columns=columns)
    duplicated = table["video"].duplicated(keep=False)
    table.loc[duplicated, "video"] = [Path(f).name for f in table.loc[duplicated, "file"]]
    table.insert(6, "patient", patient_ids(table["video"].tolist(), table["csv_patient"].tolist()))
    table.attrs["failures"] = failures
    table.attrs["csv"] = str(root / CSV_NAME) if csv_rows else None
    return table


def load_pocus(
    root: Path | None = None,
    image_size: int = 128,
    fps: float | None = 3.0,
    max_frames_per_video: int | None = None,
    include_images: bool = True,
    files: Iterable[str] | None = None,
    crop: str = "centre",
    on_error: str = "raise",
    use_csv: bool = True,
) -> FrameSet:
    """Load grey frames of the POCUS clips (and images), ``image_size`` x ``image_size``.

    Args:
        root: the ``pocus`` folder; default ``<data_dir>/pocus``.
        image_size: side of the square frames returned.
        fps: samples per second of each clip (default 3, as POCOVID-Net); None keeps every frame.
        max_frames_per_video: keep at most this many frames of each clip (None: all sampled).
        include_images: add the still images as one-frame videos.
        files: load only these files, by file name or video id (default: all).
        crop: ``"centre"`` (centred square) or ``"content"`` (square of the non-black box); see
            the module docstring.
        on_error: ``"raise"`` (default) stops at the first file that cannot be read or has no
            class prefix; ``"skip"`` loads the others and lists ``(file, reason)`` in
            ``info["failures"]``.
        use_csv: take patient ids and fallback frame rates from ``dataset_metadata.csv``.

    Returns:
        A :class:`FrameSet`, frames in file order (videos first, then images).

    Raises:
        FileNotFoundError: no dataset folder (the message of :func:`dataset_dir` says what to do),
            not a POCUS folder, or no file to load.
        OSError: a file cannot be read (``on_error="raise"``); the message names it.
        ValueError: an unknown file in ``files``, an unknown ``crop`` or ``on_error``, or a file
            name without class prefix (``on_error="raise"``).
    """
    crop = lookup(CROPS, crop, "crop", error=ValueError)
    on_error = lookup(ON_ERROR, on_error, "on_error value", error=ValueError)
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    root = Path(root) if root is not None else dataset_dir("pocus")
    table = list_pocus(root, include_images=include_images, use_csv=use_csv, on_error=on_error)
    failures = list(table.attrs["failures"])
    if files is not None:
        known = {**dict(zip(table["video"], table.index)), **dict(zip(table["file"], table.index))}
        known.update({Path(f).name: i for f, i in zip(table["file"], table.index)})
        wanted = [lookup(known, name, "POCUS file", error=ValueError) for name in files]
        table = table.loc[sorted(set(wanted))]
    if table.empty:
        raise FileNotFoundError(f"No POCUS file to load in {root} (failures: {failures}).")

    parts, rate_source = [], {}
    for row in table.itertuples():
        path = root / row.file
        try:
            if row.kind == "image":
                grey = np.asarray(read_grey(path))[None]
                clip = Clip(grey, np.zeros(1, int), np.zeros(1), "image")
            else:
                fallback = None if np.isnan(row.csv_fps) else float(row.csv_fps)
                clip = read_clip(path, fps, max_frames_per_video, fallback_fps=fallback)
        except OSError as exc:
            if on_error == "raise":
                raise
            failures.append((row.file, str(exc)))
            continue
        rate_source[row.video] = clip.rate_source
        parts.append((row, clip, _square(clip.frames, image_size, crop)))
    if not parts:
        raise FileNotFoundError(f"No POCUS file in {root} could be read: {failures}")

    def repeat(attr: str) -> list:
        return [getattr(row, attr) for row, clip, _ in parts for _ in range(len(clip.frames))]

    return FrameSet(
        frames=np.concatenate([frames for _, _, frames in parts]),
        labels=np.asarray(repeat("label")),
        videos=repeat("video"),
        patients=repeat("patient"),
        files=repeat("file"),
        frame_index=np.concatenate([clip.index for _, clip, _ in parts]),
        fine_labels=repeat("fine_label"),
        times_s=np.concatenate([clip.times for _, clip, _ in parts]),
        info={
            "root": str(root),
            "fps": fps,
            "image_size": image_size,
            "crop": crop,
            "max_frames_per_video": max_frames_per_video,
            "include_images": include_images,
            "csv": table.attrs["csv"],
            "rate_source": rate_source,
            "failures": failures,
        },
    )


def _stem(name: str) -> str:
    path = Path(name)
    return path.stem if path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES else path.name


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _read_csv(path: Path) -> dict[str, tuple[float | None, float | None]]:
    """``stem -> (frame rate, patient id)`` from the metadata CSV (also under the lower-case stem),
    rows shifted one cell to the right from ``Framerate`` on read shifted; {} without a CSV."""
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in ("Filename", "Framerate", "Resolution", "Length (frames)", "Patient ID / Name"):
        if column not in table.columns:
            raise ValueError(f"{path} has no column '{column}': it is not the POCUS metadata CSV.")
    patient_at = table.columns.get_loc("Patient ID / Name")
    out: dict[str, tuple[float | None, float | None]] = {}
    for _, row in table.iterrows():
        fps, patient = _number(row["Framerate"]), _number(row["Patient ID / Name"])
        shifted = (
            fps is None
            and _number(row["Resolution"]) is not None
            and bool(_RESOLUTION.match(row["Length (frames)"]))
            and patient_at + 1 < len(row)
        )
        if shifted:
            fps, patient = _number(row["Resolution"]), _number(row.iloc[patient_at + 1])
        name = row["Filename"].strip()
        for key in (name, name.lower()):
            out.setdefault(key, (fps, patient))
    return out


def _square(frames: np.ndarray, size: int, crop: str) -> np.ndarray:
    """uint8 (n, h, w) -> float32 (n, size, size) in [0, 1]: crop (module docstring), resize."""
    from skimage.transform import resize

    if crop == "content":
        content = frames.max(axis=0) > CONTENT_THRESHOLD
        if content.any():
            rows, cols = np.flatnonzero(content.any(1)), np.flatnonzero(content.any(0))
            frames = frames[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    n, h, w = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = frames[:, top : top + side, left : left + side]
    out = resize(square, (n, size, size), anti_aliasing=side > size)
    return np.clip(out, 0, 1).astype(np.float32)
