"""B-mode image formation shared by the ultrasound phantoms.

A B-mode image is formed, not painted, in the steps a scanner takes:

1. **Scatterers.** Every pixel of the beam-space grid (rows = depth along the beam, columns =
   scan lines) holds a random scatterer with zero-mean Gaussian amplitude, scaled by the square
   root of the local echogenicity (backscattered power) and by the two-way transmission (bone
   and air block the beam: shadows). Many scatterers per resolution cell give *fully developed
   speckle*.
2. **Point-spread function.** The RF echo is the scatterer field convolved with the PSF: an
   axial pulse (a Gaussian-windowed cosine at the carrier) times a Gaussian lateral beam profile.
   The convolution is a product in the Fourier domain (``scipy.fft``, all frames at once).
3. **Envelope detection.** Keeping only the positive axial frequencies of the filtered spectrum
   gives the analytic (Hilbert) signal; its magnitude is the envelope. For fully developed
   speckle the envelope is Rayleigh distributed: mean/std = sqrt(pi / (4 - pi)) = 1.913.
4. **Attenuation and time-gain compensation.** Tissue attenuates the round trip by
   ``2 * alpha * f * z`` dB; receiver noise enters before the TGC amplifier, which then
   compensates the nominal attenuation with a few slider errors, so deep noise is amplified.
5. **Log compression** of the envelope to a display dynamic range, quantised to 8 bits.
6. **Scan conversion** of the beam-space image to Cartesian pixels for a convex probe (sector);
   a linear probe's beam space is already rectangular.

The carrier is scaled to the pixel grid (``CARRIER_CYCLES_PER_PX``): a real 5 MHz RF line would
need about four times finer axial sampling than a 256-pixel image has. The envelope statistics and
the speckle size, set by the pulse length and beam width in millimetres, are unaffected.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import scipy.fft
from scipy import ndimage

RAYLEIGH_MEAN_OVER_STD = float(np.sqrt(np.pi / (4 - np.pi)))  # 1.913
CARRIER_CYCLES_PER_PX = 0.3  # well below Nyquist (0.5) and above the pulse bandwidth


@contextlib.contextmanager
def without_huge_pages():
    """Within this block numpy does not ask the kernel for transparent huge pages.

    numpy advises huge pages for every array of 4 MiB or more. The generators allocate and free
    such arrays by the hundred, and where the kernel services that advice by compacting memory
    (transparent_hugepage ``madvise``, as on this project's 2-core machines) each allocation costs
    a page fault of 0.1-0.2 ms: a lung phantom batch then spends more time in the kernel than in
    numpy (measured: 75 images/s with the advice, 183 without, same machine and seed). The
    setting is process-wide and restored on exit; it changes no value computed."""
    multiarray = getattr(np, "_core", None)
    setter = getattr(getattr(multiarray, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is None:  # another numpy: leave its allocator alone
        yield
        return
    before = setter(False)
    try:
        yield
    finally:
        setter(before)


@functools.lru_cache(maxsize=64)
def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """The ``(n, n)`` matrix ``K`` with ``K @ v`` equal to ``ndimage.gaussian_filter1d(v, sigma,
    truncate=3)`` (mirror edges) for every ``v`` of length ``n``: the filter's impulse responses
    as columns. Read-only and cached per ``(n, sigma)``."""
    k = ndimage.gaussian_filter1d(np.eye(n, dtype=np.float32), sigma, axis=0, truncate=3.0)
    k.flags.writeable = False
    return k


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``ndimage.gaussian_filter(image, (0, sigma, sigma), truncate=3)`` of a stack of frames
    ``(frames, rows, cols)``, as two matrix products (:func:`gaussian_matrix`), float32.

    A wide Gaussian (sigma 6: 37 taps a direction) costs scipy's filter more than the BLAS
    matrix product of a 256-pixel frame does (measured 29 ms against 14 ms on one core for 16
    frames of 320 x 256); the values agree to float32 rounding (tested)."""
    rows, cols = image.shape[-2:]
    out = np.matmul(gaussian_matrix(rows, float(sigma)), image.astype(np.float32, copy=False))
    return np.matmul(out, gaussian_matrix(cols, float(sigma)).T)


def as_generator(seed) -> np.random.Generator:
    """``np.random.Generator`` from an int seed (or the Generator itself)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def analytic_psf_spectrum(
    shape: tuple[int, int],
    axial_sigma_px: float,
    lateral_sigma_px: float,
    carrier: float = CARRIER_CYCLES_PER_PX,
) -> np.ndarray:
    """Fourier transform of the analytic point-spread function on a ``(rows, cols)`` grid.

    The RF PSF is ``exp(-z^2 / 2 sz^2) cos(2 pi f_c z) * exp(-x^2 / 2 sx^2)``; its spectrum is a
    pair of Gaussians at +-f_c along the axial frequency. Keeping the positive-frequency half (and
    doubling it) makes the filtered field the analytic signal, whose magnitude is the envelope.

    Args:
        shape: beam-space grid ``(rows, cols)``; rows run along the beam (depth).
        axial_sigma_px: standard deviation of the pulse's Gaussian window, in rows.
        lateral_sigma_px: standard deviation of the beam profile, in columns.
        carrier: carrier frequency in cycles per row.

    Returns:
        complex64 array of ``shape``, normalised so that white unit-variance scatterers give an
        envelope of unit mean square.
    """
    rows, cols = shape
    fz = scipy.fft.fftfreq(rows)[:, None]
    fx = scipy.fft.fftfreq(cols)[None, :]
    sf_z = 1.0 / (2 * np.pi * axial_sigma_px)  # Gaussian window -> Gaussian spectrum
    sf_x = 1.0 / (2 * np.pi * lateral_sigma_px)
    # One-sided (analytic) and tapered to zero at DC and Nyquist: a hard cut there would give the
    # PSF slowly decaying 1/z tails that smear bright reflectors (ribs) down into their shadows.
    taper = np.where(fz > 0, np.sin(2 * np.pi * fz) ** 2, 0.0)
    axial = np.exp(-((fz - carrier) ** 2) / (2 * sf_z**2)) * taper
    lateral = np.exp(-(fx**2) / (2 * sf_x**2))
    h = axial * lateral
    h *= np.sqrt(rows * cols / np.sum(h**2))  # unit output power for unit white input
    return h.astype(np.complex64)


def baseband_psf_spectrum(
    shape: tuple[int, int], axial_sigma_px: float, lateral_sigma_px: float
) -> np.ndarray:
    """Fourier transform of the point-spread function after IQ demodulation (baseband).

    A scanner mixes the RF echo down to baseband before detection: the complex (I + jQ) echo is
    then complex scatterers seen through the pulse and beam envelopes, ``exp(-z^2 / 2 sz^2)
    exp(-x^2 / 2 sx^2)``, with no carrier. Its magnitude is the same envelope as the analytic
    signal's (:func:`analytic_psf_spectrum`), but the pulse may be as short as one sample: the
    carrier no longer needs room below the Nyquist frequency. Use it with complex scatterers
    (:func:`envelope`).

    Returns:
        real float32 array of ``shape`` (complex64 for :func:`envelope`), normalised so that white
        unit-variance complex scatterers give an envelope of unit mean square.
    """
    rows, cols = shape
    fz = scipy.fft.fftfreq(rows)[:, None]
    fx = scipy.fft.fftfreq(cols)[None, :]
    h = np.exp(-2 * np.pi**2 * (fz**2 * axial_sigma_px**2 + fx**2 * lateral_sigma_px**2))
    h *= np.sqrt(rows * cols / np.sum(h**2))
    return h.astype(np.complex64)


def complex_scatterers(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Circular complex Gaussian scatterers of unit variance (I and Q each of variance 1/2)."""
    iq = rng.standard_normal((*shape, 2), dtype=np.float32)  # I and Q side by side
    iq *= np.float32(np.sqrt(0.5))
    return iq.view(np.complex64)[..., 0]


def padded_shape(shape: tuple[int, int], pad: int = 16) -> tuple[int, int]:
    """A fast FFT size at least ``pad`` larger than ``shape`` on both axes.

    The zero padding keeps the circular FFT convolution from wrapping the bright skin at the top
    into the bottom rows (and one image edge into the other).
    """
    return tuple(scipy.fft.next_fast_len(n + pad) for n in shape)


def envelope(
    amplitude: np.ndarray,
    psf_spectrum: np.ndarray,
    rng: np.random.Generator,
    scatterers: np.ndarray | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Envelope of random scatterers of the given amplitude map seen through the PSF.

    Args:
        amplitude: float array ``(..., rows, cols)``, the RMS scatterer amplitude per pixel
            (square root of echogenicity times transmission).
        psf_spectrum: from :func:`analytic_psf_spectrum`, of shape ``(rows, cols)`` or larger
            (:func:`padded_shape`): the field is then zero-padded for the convolution.
        rng: random generator for the scatterers.
        scatterers: optional unit-variance scatterer field of ``amplitude``'s shape (frames of one
            video share most of theirs): real with :func:`analytic_psf_spectrum`, complex
            (:func:`complex_scatterers`) with :func:`baseband_psf_spectrum`; real ones are drawn
            from ``rng`` when omitted.
        workers: FFT threads (1 when the caller already runs frames in parallel threads).

    Returns:
        float32 envelope of ``amplitude``'s shape.
    """
    if scatterers is None:
        scatterers = rng.standard_normal(amplitude.shape, dtype=np.float32)
    dtype = np.complex64 if np.iscomplexobj(scatterers) else np.float32
    field = (amplitude * scatterers).astype(dtype, copy=False)
    rows, cols = field.shape[-2:]
    spectrum = scipy.fft.fft2(field, s=psf_spectrum.shape, workers=workers)
    spectrum *= psf_spectrum
    analytic = scipy.fft.ifft2(spectrum, workers=workers, overwrite_x=True)[..., :rows, :cols]
    return np.abs(analytic)


def attenuation_amplitude(
    depth_mm: np.ndarray, alpha_db_cm_mhz: float, freq_mhz: float
) -> np.ndarray:
    """Two-way amplitude factor of tissue attenuation at each depth (mm)."""
    return 10 ** (-2 * alpha_db_cm_mhz * freq_mhz * (depth_mm / 10.0) / 20.0)


def tgc_gain(
    depth_mm: np.ndarray,
    alpha_db_cm_mhz: float,
    freq_mhz: float,
    rng: np.random.Generator,
    sliders: int = 8,
    slider_error_db: float = 1.0,
) -> np.ndarray:
    """Time-gain compensation: the inverse of the nominal attenuation, set by a few sliders.

    Each of ``sliders`` evenly spaced depths is off by a uniform error of up to
    ``slider_error_db``; the gain is interpolated linearly in dB between them.
    """
    knots = np.linspace(depth_mm.min(), depth_mm.max(), sliders)
    error_db = np.interp(depth_mm, knots, rng.uniform(-slider_error_db, slider_error_db, sliders))
    return 10 ** ((2 * alpha_db_cm_mhz * freq_mhz * (depth_mm / 10.0) + error_db) / 20.0)


def log_compress(env: np.ndarray, reference: float, dynamic_range_db: float) -> np.ndarray:
    """Log compression to 8 bits: ``reference`` maps to 255, ``-dynamic_range_db`` below it to 0.

    Returns:
        uint8 array of ``env``'s shape.
    """
    out = np.maximum(env, np.float32(1e-12) * reference, dtype=np.float32)
    np.log10(out, out=out)
    scale = np.float32(20.0 * 255.0 / dynamic_range_db)  # 8-bit steps per decade of amplitude
    out *= scale
    out += np.float32(255.0 - scale * np.log10(reference))
    np.clip(out, 0, 255, out=out)
    return np.rint(out, out=out).astype(np.uint8)


def sector_geometry(
    image_size: int, radius_mm: float, depth_mm: float, angle_deg: float, fill: bool = False
) -> dict:
    """Cartesian pixel grid of a convex probe's sector, and where each pixel falls in beam space.

    The apex of the fan lies ``radius_mm`` above the transducer face; beams run radially over
    ``angle_deg``; the image shows depths 0..``depth_mm`` below the face.

    Args:
        image_size: side of the square output grid (and of the beam-space grid it samples).
        radius_mm: the probe's radius of curvature.
        depth_mm: imaging depth below the face.
        angle_deg: the fan's opening angle.
        fill: ``False``: square pixels, the whole fan centred in the square image
            (letterboxed). ``True``: the frame as a scanner displays it, then resized to the
            square as the loaders resize real frames (the pixels are then taller or wider than
            square): it shows depths 0 to ``depth_mm`` of the centre scan line, so its top edge
            is flat, at the face's centre (the face's arc above it is cut off), and its width is
            the fan's at its deep corners.

    Returns:
        dict with ``row``, ``col`` (fractional beam-space indices per output pixel, for a beam-space
        grid of ``image_size`` x ``image_size``), ``inside`` (bool sector mask), ``spacing_mm``
        (the larger side of a pixel) and ``spacing_yx_mm`` (its height and width).
    """
    half = np.deg2rad(angle_deg) / 2
    r_max = radius_mm + depth_mm
    width = 2 * r_max * np.sin(half)
    height = r_max - radius_mm * np.cos(half)
    if fill:  # the frame's top edge at the face's centre, depth 0
        dy, dx = depth_mm / image_size, width / image_size
        y = ((np.arange(image_size) + 0.5) * dy)[:, None] + radius_mm
    else:
        dy = dx = max(width, height) / image_size
        # the frame's top edge lies (frame height - fan height) / 2 above the face's corners
        top = (image_size * dy - height) / 2
        y = ((np.arange(image_size) + 0.5) * dy)[:, None] + radius_mm * np.cos(half) - top
    x = ((np.arange(image_size) + 0.5) * dx)[None, :] - image_size * dx / 2
    r = np.hypot(x, y)
    theta = np.arctan2(x, y)
    row = (r - radius_mm) / depth_mm * image_size - 0.5
    col = (theta + half) / (2 * half) * image_size - 0.5
    inside = (row >= 0) & (row <= image_size - 1) & (col >= 0) & (col <= image_size - 1)
    return {
        "row": row,
        "col": col,
        "inside": inside,
        "spacing_mm": max(dy, dx),
        "spacing_yx_mm": (dy, dx),
    }


def scan_convert(beam: np.ndarray, geometry: dict, order: int = 1) -> np.ndarray:
    """Resample beam-space frames ``(..., rows, cols)`` onto the sector's Cartesian grid.

    Args:
        beam: beam-space array; leading axes (frames) are converted together.
        geometry: from :func:`sector_geometry`.
        order: 1 for bilinear (images), 0 for nearest (label maps).

    Returns:
        array of ``beam``'s dtype with the last two axes replaced by the Cartesian grid; zero
        outside the sector.
    """
    rows, cols = beam.shape[-2:]
    inside = geometry["inside"]
    r = np.clip(geometry["row"], 0, rows - 1)
    c = np.clip(geometry["col"], 0, cols - 1)
    flat = beam.reshape(*beam.shape[:-2], rows * cols)
    if order == 0:
        idx = np.rint(r).astype(np.intp) * cols + np.rint(c).astype(np.intp)
        out = np.take(flat, idx, axis=-1)
    else:
        r0 = np.minimum(np.floor(r).astype(np.intp), rows - 2)
        c0 = np.minimum(np.floor(c).astype(np.intp), cols - 2)
        fr, fc = (r - r0).astype(np.float32), (c - c0).astype(np.float32)
        i00 = r0 * cols + c0
        v = flat.astype(np.float32, copy=False)
        out = (np.take(v, i00, axis=-1) * (1 - fc) + np.take(v, i00 + 1, axis=-1) * fc) * (
            1 - fr
        ) + (
            np.take(v, i00 + cols, axis=-1) * (1 - fc) + np.take(v, i00 + cols + 1, axis=-1) * fc
        ) * fr
        if np.issubdtype(beam.dtype, np.integer):
            out = np.rint(out)
        out = out.astype(beam.dtype)
    return np.where(inside, out, 0).astype(beam.dtype)


def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of PIL's bilinear resize along one axis: a triangle filter
    widened by the reduction factor (antialiased), centred on each output pixel, normalised."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - stretch + 0.5), 0), min(int(centre + stretch + 0.5), n_in)
        x = np.arange(lo, hi)
        w = np.maximum(0.0, 1 - np.abs((x - centre + 0.5) / stretch))
        weights[i, lo:hi] = w / w.sum()
    return weights


def display_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """Frames ``(..., H, W)`` resized to ``size`` x ``size`` as the loaders resize real frames
    (PIL's antialiased bilinear, :func:`resize_weights`): a display pixel averages the finer
    pixels it covers, speckle included. Returns float32."""
    rows = resize_weights(frames.shape[-2], size).astype(np.float32)
    cols = resize_weights(frames.shape[-1], size).astype(np.float32)
    return rows @ frames.astype(np.float32, copy=False) @ cols.T


def nearest_resize(labels: np.ndarray, size: int) -> np.ndarray:
    """Label maps ``(..., H, W)`` resized to ``size`` x ``size`` by nearest neighbour (the
    pixel whose centre each output pixel's centre falls in, as PIL's NEAREST)."""
    r = np.floor((np.arange(size) + 0.5) * labels.shape[-2] / size).astype(np.intp)
    c = np.floor((np.arange(size) + 0.5) * labels.shape[-1] / size).astype(np.intp)
    return labels[..., r[:, None], c[None, :]]
