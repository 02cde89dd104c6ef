"""Registry of the public datasets the book can use, and their explicit download.

Nothing is downloaded at import or behind a user's back: only :func:`fetch` downloads, and the
notebooks never call it. Archives go through pooch; after extraction, files whose SHA-256 is known
(byte-identical to the official release) are checked, so a corrupted or different download is
caught even where the archive's own hash was never published.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from lus_common.config.paths import data_dir
from lus_common.config.registry import lookup


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset release."""

    url: str
    known_hash: str | None  # pooch form "sha256:..."; None where the release publishes none
    unzip: bool = False


@dataclass(frozen=True)
class Dataset:
    """A downloadable dataset: its files, where they land and how to check them."""

    name: str
    description: str
    citation: str
    files: dict[str, RemoteFile]
    content_sha256: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    manual: str = ""  # what a user must do by hand, if anything


REGISTRY: dict[str, Dataset] = {
    "hc18": Dataset(
        name="hc18",
        description="HC18 Grand Challenge: 999 labelled fetal head ultrasound images, 800x540.",
        citation=(
            "van den Heuvel et al., PLoS One 13(8):e0200412, 2018; Zenodo 10.5281/zenodo.1327317"
        ),
        files={
            "training_set.zip": RemoteFile(
                "https://zenodo.org/records/1327317/files/training_set.zip?download=1",
                None,
                unzip=True,
            ),
            "training_set_pixel_size_and_HC.csv": RemoteFile(
                "https://zenodo.org/records/1327317/files/training_set_pixel_size_and_HC.csv?download=1",
                None,
            ),
        },
        # Images known byte-identical to the release (../shared/data/MANIFEST.sha256).
        content_sha256={
            "training_set/000_HC.png": (
                "c530210f08e49a7e348075b59b90008586a856271bb472061ab043b1ba2a3715"
            ),
            "training_set/001_HC.png": (
                "f468235ce4a2a778d5340c550e18fc2de6b50936a19cadac3679d075654e5b2f"
            ),
            "training_set/014_2HC.png": (
                "5cba2cedad1b6ac1ec16484afc85409aa9e7269d361a49ffc4f6934111ccf691"
            ),
        },
    ),
    "shenzhen_cxr": Dataset(
        name="shenzhen_cxr",
        description="Shenzhen chest X-ray set (662 images) with lung masks.",
        citation="Jaeger et al., Quant Imaging Med Surg 4(6), 2014; masks: Stirenko et al. 2018",
        files={},
        manual=(
            "Images: https://data.lhncbc.nlm.nih.gov/public/Tuberculosis-Chest-X-ray-Datasets/"
            "Shenzhen-Hospital-CXR-Set/index.html ; masks: the Kaggle set 'Chest X-ray masks and "
            "labels' (login needed). Place them as shenzhen_cxr/images/*.png and "
            "shenzhen_cxr/masks/*.png."
        ),
    ),
    "pocus": Dataset(
        name="pocus",
        description=(
            "POCUS lung ultrasound, convex probe: 121 clips and 29 images, COVID-19, bacterial "
            "or viral pneumonia and healthy (class = file-name prefix Cov/Pneu/Vir/Reg)."
        ),
        citation="Born et al. 2021, Applied Sciences 11(2):672 (POCOVID-Net)",
        files={},
        manual=(
            "Clone https://github.com/jannisborn/covid19_ultrasound and copy "
            "data/pocus_videos/convex, data/pocus_images/convex and data/dataset_metadata.csv into "
            "pocus/ (as pocus/pocus_videos/convex/, pocus/pocus_images/convex/ and "
            "pocus/dataset_metadata.csv). Rows with InThisRepo = No in the CSV are not in the "
            "repository; licences differ per source (CSV column 'License')."
        ),
    ),
    "lus_pleura_rib": Dataset(
        name="lus_pleura_rib",
        description=(
            "156 real lung ultrasound frames of one healthy volunteer (curved Clarius probe, 12 "
            "clips of 13 frames) with pleural-line, rib-line and rib-shadow masks."
        ),
        citation=(
            "Ma, Zeng & Zhou, WPI CS541 project 2022 (github.com/MXHsj/CS541-Deep-Learning-Project)"
        ),
        files={},
        manual=(
            "Clone https://github.com/MXHsj/CS541-Deep-Learning-Project and copy its frames and "
            "masks as lus_pleura_rib/image/<stem>.jpg and "
            "lus_pleura_rib/mask/{pleural_line,rib_line,rib_shadow}/<stem>-<structure>.jpg. No "
            "licence is stated for the data: research and teaching use, cite the repository."
        ),
    ),
}


def get_dataset(name: str) -> Dataset:
    """Look up a dataset by name.

    Raises:
        KeyError: listing the known names.
    """
    return lookup(REGISTRY, name, "dataset")


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_dataset(name: str, root: Path | None = None) -> list[str]:
    """Check the files whose SHA-256 is pinned in the registry.

    Args:
        name: dataset name.
        root: folder that holds the dataset (default: ``data_dir() / name``).

    Returns:
        The relative paths that were checked.

    Raises:
        ValueError: a file is missing or differs from the release.
    """
    ds = get_dataset(name)
    root = Path(root) if root is not None else data_dir() / name
    for rel, expected in ds.content_sha256.items():
        path = root / rel
        if not path.is_file():
            raise ValueError(
                f"{name}: expected file {path} is missing; the download is incomplete."
            )
        actual = sha256_of(path)
        if actual != expected:
            raise ValueError(
                f"{name}: {rel} has SHA-256 {actual}, expected {expected}. "
                "The files differ from the official release: delete the folder and fetch again."
            )
    return list(ds.content_sha256)


def fetch(name: str, root: Path | None = None, progressbar: bool = True) -> Path:
    """Download a dataset into the data directory (explicit; needs the network).

    Args:
        name: dataset name from :data:`REGISTRY`.
        root: target data directory (default: :func:`lus_common.config.paths.data_dir`).
        progressbar: show pooch's progress bar.

    Returns:
        The dataset folder.

    Raises:
        RuntimeError: the dataset cannot be downloaded automatically (the message says how).
    """
    import pooch

    ds = get_dataset(name)
    if not ds.files:
        raise RuntimeError(f"'{name}' cannot be downloaded automatically. {ds.manual}")
    target = (Path(root) if root is not None else data_dir()) / name
    target.mkdir(parents=True, exist_ok=True)
    for fname, remote in ds.files.items():
        local = pooch.retrieve(
            remote.url,
            known_hash=remote.known_hash,
            fname=fname,
            path=target,
            progressbar=progressbar,
        )
        if remote.unzip:
            with zipfile.ZipFile(local) as zf:
                zf.extractall(target)
    verify_dataset(name, target)
    return target
