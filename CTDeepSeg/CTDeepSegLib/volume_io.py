"""Reading and writing volumes through SimpleITK (NIfTI, NRRD, MetaImage, DICOM series folders).

Every failure a user can cause (a missing or unreadable file, a 2D or 4D image, colour pixels, NaNs) becomes a
``CTDeepSegError`` that names the file and says what to do. Writes are atomic: the data goes to a temporary
file beside the target, which is renamed only once complete, so an interrupted write leaves no partial file,
and an existing file is never replaced unless the caller asks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import CTDeepSegError
from .volume import Volume

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")
_COMPRESSED_SUFFIXES = (".nii.gz", ".nrrd", ".mha", ".seg.nrrd")
_DETACHED_SUFFIXES = (".mhd", ".nhdr")


def volume_suffix(path: Path | str) -> str:
    """The recognised suffix of ``path`` (``.nii.gz`` counts as one), or an error listing the supported ones."""
    name = Path(path).name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise CTDeepSegError(
        f"{path}: unsupported file type; use one of {', '.join(s for s in VOLUME_SUFFIXES if s != '.seg.nrrd')}."
    )


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with a source location; the last line holds the human-readable description.
    return lines[-1] if lines else type(error).__name__


def _dicom_series(folder: Path, series_uid: str | None) -> list[str]:
    reader = sitk.ImageSeriesReader
    try:
        uids = list(reader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as error:
        raise CTDeepSegError(f"{folder}: could not scan the folder for DICOM files ({_first_line(error)}).") from None
    if not uids:
        raise CTDeepSegError(
            f"{folder}: no DICOM series found in this folder. Point to a folder of DICOM slices, or to a "
            f"volume file ({', '.join(VOLUME_SUFFIXES[:-1])})."
        )
    files = {uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}
    if series_uid is not None:
        if series_uid not in files:
            raise CTDeepSegError(
                f"{folder}: no DICOM series with UID {series_uid}; the folder holds {', '.join(sorted(files))}."
            )
        return files[series_uid]
    return max(files.values(), key=len)


def _read_image(path: Path, series_uid: str | None) -> sitk.Image:
    if not path.exists():
        raise CTDeepSegError(f"{path}: no such file or folder.")
    try:
        if path.is_dir():
            names = _dicom_series(path, series_uid)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(names)
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise CTDeepSegError(
            f"{path}: could not be read as a medical image ({_first_line(error)}). Supported: "
            f"{', '.join(VOLUME_SUFFIXES[:-1])} files and DICOM series folders."
        ) from None


def _to_3d(image: sitk.Image, path: Path) -> sitk.Image:
    dimension = image.GetDimension()
    size = image.GetSize()
    if dimension == 4 and size[3] == 1:
        return image[:, :, :, 0]
    if dimension == 4:
        raise CTDeepSegError(
            f"{path}: is a 4D image ({size[3]} volumes of {size[:3]}); CTDeepSeg needs one 3D volume. "
            "Extract one time point or channel first (e.g. SimpleITK: image[:, :, :, t])."
        )
    if dimension != 3 or min(size) < 2:
        raise CTDeepSegError(
            f"{path}: is a 2D image (size {size}); CTDeepSeg needs a 3D volume of at least two slices."
        )
    return image


def read_volume(path: Path | str, series_uid: str | None = None) -> Volume:
    """Read a 3D image from a file or a DICOM series folder (the series with most slices unless a UID is given).

    Integer voxel types are kept (so label maps stay integer); NaN or infinite voxels are refused.
    """
    path = Path(path)
    image = _to_3d(_read_image(path, series_uid), path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CTDeepSegError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} values per voxel (a colour or vector image); "
            "CTDeepSeg needs a scalar (grey-level) volume."
        )
    if "complex" in image.GetPixelIDTypeAsString():
        raise CTDeepSegError(f"{path}: holds complex numbers; CTDeepSeg needs real-valued voxels.")
    try:
        volume = Volume(
            sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
        )
    except CTDeepSegError as error:
        raise CTDeepSegError(f"{path}: {error}") from None
    volume.require_finite(f"image {path}")
    return volume


def read_label(path: Path | str, reference: Volume | None = None) -> Volume:
    """Read a label map: integer voxels (integral floats are converted), optionally checked against an image grid."""
    volume = read_volume(path)
    array = volume.array
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        if not np.array_equal(array, np.round(array)):
            raise CTDeepSegError(
                f"{path}: is not a label map (it holds non-integer values); expected integer labels such as "
                "0 for background, 1, 2, ... for structures."
            )
        volume = volume.with_array(array.astype(np.int32))
    if reference is not None:
        try:
            reference.require_same_grid(volume)
        except CTDeepSegError as error:
            raise CTDeepSegError(f"{path}: {error}") from None
    return volume


def to_sitk(volume: Volume) -> sitk.Image:
    """The volume as a SimpleITK image with the same geometry (booleans become uint8)."""
    array = volume.array.astype(np.uint8) if volume.array.dtype == np.bool_ else volume.array
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in volume.spacing))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction.reshape(-1)))
    return image


def write_probabilities(
    probabilities: np.ndarray, reference: Volume, path: Path | str, overwrite: bool = False
) -> Path:
    """Per-class probabilities ``(classes, k, j, i)`` as one 4D file (class as the fourth axis), atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CTDeepSegError(f"{path}: already exists; choose another name or allow overwriting.")
    series = sitk.JoinSeries([to_sitk(reference.with_array(channel)) for channel in probabilities])
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{volume_suffix(path)}", dir=path.parent)
    os.close(handle)
    try:
        sitk.WriteImage(series, temporary, useCompression=True)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def write_volume(volume: Volume, path: Path | str, overwrite: bool = False) -> Path:
    """Write ``volume`` to ``path`` atomically; refuses to replace an existing file unless ``overwrite``."""
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix in _DETACHED_SUFFIXES:
        raise CTDeepSegError(
            f"{path}: {suffix} keeps its voxels in a second file, which cannot be written atomically; "
            "write a single-file .nrrd, .mha or .nii.gz instead."
        )
    if path.exists() and not overwrite:
        raise CTDeepSegError(f"{path}: already exists; choose another name or allow overwriting.")
    if not path.parent.is_dir():
        raise CTDeepSegError(f"{path}: the folder {path.parent} does not exist; create it first.")
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
        os.close(handle)
        sitk.WriteImage(to_sitk(volume), temporary, useCompression=suffix in _COMPRESSED_SUFFIXES)
        os.replace(temporary, path)
    except RuntimeError as error:
        raise CTDeepSegError(f"{path}: could not be written ({_first_line(error)}).") from None
    except PermissionError:
        raise CTDeepSegError(f"{path}: permission denied; choose a folder you can write to.") from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
    return path
