"""Calibration data in any form a user holds: arrays, ``.npz``/``.npy`` files, a folder of
images with the model's preprocessing, or a :class:`~tvm_hcprune.zoo.datasets.Dataset`.

:func:`calibration_data` turns what ``prune(mod, calibration=...)`` and ``hcprune
prune|compile --calibration PATH`` accept into one checked array ``[N, *input_shape]`` (the
model input's exact shape and dtype, labels when the source has them) and
:func:`split_holdout` sets aside the held-out slice that measures agreement with the dense
model. Everything is validated before anything runs: a wrong input name, shape or dtype is
an :class:`~tvm_hcprune.errors.HCPruneError` naming what was expected.

Image folders are read with Pillow and preprocessed by an :class:`ImagePreprocess` record:
``size`` (default: the model input's height and width), ``resize`` (``"stretch"`` to the
size, ``"crop"``: short side to ``size/crop_fraction`` then a centre crop, as ImageNet
classifiers; ``"pad"``: height to ``size``, keep the aspect ratio, pad right with zeros,
as text-line recognisers), ``channels`` (``"rgb"``, ``"bgr"``, ``"gray"``; default from the
input's channel count: 1 is gray, 3 is rgb), then ``(pixel * scale - mean) / std`` per
channel and ``layout`` (``NCHW`` or ``NHWC``; default guessed from where the input has 1 or
3 channels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.runner import as_samples, check_samples, module_input
from tvm_hcprune.utils.options import Options
from tvm_hcprune.zoo.datasets import Dataset

__all__ = ["CalibrationData", "ImagePreprocess", "calibration_data", "split_holdout"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")


@dataclass(frozen=True)
class ImagePreprocess(Options):
    """How images from a folder become model inputs (see the module docs).

    Parameters
    ----------
    mean, std : tuple of float
        Per-channel (one value: every channel) normalisation after ``scale``:
        ``(pixel * scale - mean) / std``. ImageNet models: ``(0.485, 0.456, 0.406)`` and
        ``(0.229, 0.224, 0.225)``.
    scale : float
        Pixel multiplier before the normalisation (default ``1/255``: pixels in [0, 1]).
    size : (int, int) or None
        ``(height, width)`` of the input; None: the model input's.
    resize : {"stretch", "crop", "pad"}
    crop_fraction : float
        ``"crop"``: the short side is resized to ``size / crop_fraction`` before the centre
        crop (0.875: 256 -> 224).
    channels : {"rgb", "bgr", "gray"} or None
        None: gray for 1-channel inputs, rgb for 3.
    layout : {"NCHW", "NHWC"} or None
        None: from the model input's shape.

    Examples
    --------
    >>> ImagePreprocess.of(None, mean=(0.5,), std=(0.5,), resize="pad").resize
    'pad'
    """

    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    scale: float = 1.0 / 255.0
    size: tuple | None = None
    resize: str = "stretch"
    crop_fraction: float = 0.875
    channels: str | None = None
    layout: str | None = None

    def __post_init__(self):
        for name in ("mean", "std"):
            v = getattr(self, name)
            v = (v,) if isinstance(v, int | float) else tuple(float(x) for x in v)
            if len(v) not in (1, 3):
                raise HCPruneError(f"ImagePreprocess {name} needs 1 or 3 values, got {v}")
            object.__setattr__(self, name, v)
        if any(s == 0 for s in self.std):
            raise HCPruneError("ImagePreprocess std must not be 0")
        if self.resize not in ("stretch", "crop", "pad"):
            raise HCPruneError(f"ImagePreprocess resize must be stretch, crop or pad, got "
                               f"{self.resize!r}")
        if self.channels not in (None, "rgb", "bgr", "gray"):
            raise HCPruneError(f"ImagePreprocess channels must be rgb, bgr or gray, got "
                               f"{self.channels!r}")
        if self.layout not in (None, "NCHW", "NHWC"):
            raise HCPruneError(f"ImagePreprocess layout must be NCHW or NHWC, got "
                               f"{self.layout!r}")
        if self.size is not None:
            size = tuple(int(s) for s in self.size)
            if len(size) != 2 or min(size) < 1:
                raise HCPruneError(f"ImagePreprocess size must be (height, width), got "
                                   f"{self.size!r}")
            object.__setattr__(self, "size", size)
        if not 0 < self.crop_fraction <= 1:
            raise HCPruneError("ImagePreprocess crop_fraction must be in (0, 1]")


@dataclass(frozen=True, eq=False)
class CalibrationData:
    """Checked model inputs (and labels when the source had them).

    Attributes
    ----------
    samples : numpy.ndarray
        ``[N, *input_shape]``, the model input's dtype.
    labels : numpy.ndarray or None
        int64 ``[N]``.
    source : str
        Where the samples came from (for reports).
    """

    samples: np.ndarray
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def take(self, idx) -> CalibrationData:
        """The samples (and labels) at ``idx``."""
        return CalibrationData(self.samples[idx],
                               None if self.labels is None else self.labels[idx], self.source)


def _layout_of(shape, pre: ImagePreprocess) -> str:
    if pre.layout is not None:
        return pre.layout
    if len(shape) != 4:
        raise HCPruneError(f"an image folder needs a 4-D model input (N, C, H, W or N, H, W, "
                           f"C), the model takes {list(shape)}")
    if shape[1] in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    raise HCPruneError(f"cannot tell the layout of the model input {list(shape)} (no axis of "
                       "1 or 3 channels); give layout='NCHW' or 'NHWC' (--layout)")


def _resize(img, size: tuple, pre: ImagePreprocess):
    from PIL import Image  # deferred: Pillow is only needed for image folders

    h, w = size
    if pre.resize == "stretch":
        return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))
    iw, ih = img.size
    if pre.resize == "crop":
        short = max(h, w) / pre.crop_fraction
        f = short / min(iw, ih)
        nw, nh = max(w, round(iw * f)), max(h, round(ih * f))
        arr = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR))
        top, left = (nh - h) // 2, (nw - w) // 2
        return arr[top:top + h, left:left + w]
    rw = max(1, min(w, int(np.ceil(h * iw / ih))))  # "pad"
    arr = np.asarray(img.resize((rw, h), Image.Resampling.BILINEAR))
    out = np.zeros((h, w, *arr.shape[2:]), arr.dtype)
    out[:, :rw] = arr
    return out, rw


def load_image_folder(path: Path, shape, dtype: str, pre: ImagePreprocess,
                      limit: int | None = None) -> np.ndarray:
    """The images under ``path`` (sorted, recursively) as model inputs ``[N, *shape]``."""
    from PIL import Image, UnidentifiedImageError  # deferred: only for image folders

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise HCPruneError(f"the folder {path} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    if limit:
        files = files[:limit]
    layout = _layout_of(shape, pre)
    c_ax, h_ax, w_ax = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    c = shape[c_ax]
    if c not in (1, 3):
        raise HCPruneError(f"the model input {list(shape)} ({layout}) has {c} channels; image "
                           "folders fill 1 (gray) or 3 (rgb/bgr)")
    channels = pre.channels or ("gray" if c == 1 else "rgb")
    if (channels == "gray") != (c == 1):
        raise HCPruneError(f"channels={channels!r} does not fit the model input's {c} "
                           "channel(s)")
    size = pre.size or (shape[h_ax], shape[w_ax])
    if size != (shape[h_ax], shape[w_ax]):
        raise HCPruneError(f"size {size} does not match the model input's height and width "
                           f"{(shape[h_ax], shape[w_ax])}")
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    out = np.empty((len(files), *shape), np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                img = im.convert("L" if channels == "gray" else "RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise HCPruneError(f"cannot read the image {f}: {err}") from None
        res = _resize(img, size, pre)
        arr, valid = res if isinstance(res, tuple) else (res, size[1])
        arr = arr.astype(np.float32)
        if arr.ndim == 2:
            arr = arr[..., None]
        if channels == "bgr":
            arr = arr[..., ::-1]
        arr = (arr * np.float32(pre.scale) - mean) / std
        if pre.resize == "pad":
            arr[:, valid:] = 0.0
        out[i] = (arr.transpose(2, 0, 1) if layout == "NCHW" else arr)[None].reshape(shape)
    return out.astype(dtype)


def _from_npz(path: Path, name: str):
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise HCPruneError(f"cannot read {path} as a .npz of arrays: {err}") from None
    labels = arrays.pop("labels", None)
    if name in arrays:
        return arrays[name], labels
    if list(arrays) == ["arr_0"]:  # np.savez(path, x): one unnamed array
        return arrays["arr_0"], labels
    raise HCPruneError(f"{path} holds arrays {sorted(arrays)}; the model input is named "
                       f"{name!r}: save the inputs under that name (np.savez(path, "
                       f"{name}=samples), optionally with labels=...)")


def calibration_data(source, mod, preprocess: ImagePreprocess | dict | None = None,
                     limit: int | None = None) -> CalibrationData:
    """Read calibration inputs for ``mod`` from any supported ``source`` and check them.

    Parameters
    ----------
    source : array, list of arrays, dict, Dataset, (samples, labels), str or Path
        An array ``[N, *input_shape]`` (a leading batch axis of 1 may be omitted); a list of
        per-sample arrays; ``{input_name: array}``; a
        :class:`~tvm_hcprune.zoo.datasets.Dataset` or ``(samples, labels)`` (the labels give
        top-1 accuracy in reports); a ``.npy`` file; a ``.npz`` file with the array under
        the input's name (or one unnamed array) and optional ``labels``; a folder of images
        (see ``preprocess``).
    mod : tvm.IRModule
        The model the inputs are for (one input tensor).
    preprocess : ImagePreprocess or dict, optional
        Image folders only.
    limit : int, optional
        Use at most the first ``limit`` samples.

    Returns
    -------
    CalibrationData

    Raises
    ------
    HCPruneError
        Unreadable files, no images, a wrong input name, shape or dtype, NaN or Inf.

    Examples
    --------
    >>> data = calibration_data("calib.npz", mod)  # doctest: +SKIP
    >>> data = calibration_data("images/", mod, {"mean": (0.485, 0.456, 0.406),
    ...                                           "std": (0.229, 0.224, 0.225)})  # doctest: +SKIP
    """
    name, shape, dtype = module_input(mod)
    labels, desc = None, type(source).__name__
    if isinstance(source, CalibrationData):
        samples, labels, desc = source.samples, source.labels, source.source
    elif isinstance(source, str | Path):
        path = Path(source)
        desc = str(path)
        if path.is_dir():
            if any(d is None for d in shape):
                raise HCPruneError(f"the model input {name!r} has dynamic dimensions "
                                   f"{list(shape)}; pin them to read an image folder")
            samples = load_image_folder(path, shape, dtype,
                                        ImagePreprocess.of(preprocess), limit)
        elif not path.is_file():
            raise HCPruneError(f"calibration data {str(path)!r} not found (give a .npz, a "
                               ".npy or a folder of images)")
        elif path.suffix == ".npz":
            samples, labels = _from_npz(path, name)
        elif path.suffix == ".npy":
            try:
                samples = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise HCPruneError(f"cannot read {path} as a .npy array: {err}") from None
        else:
            raise HCPruneError(f"calibration data {path}: give a .npz or .npy file or a "
                               "folder of images")
    elif isinstance(source, Mapping):
        if set(source) - {"labels"} != {name}:
            raise HCPruneError(f"calibration arrays are named {sorted(source)}; the model "
                               f"input is {name!r}: give {{{name!r}: samples}}")
        samples, labels = source[name], source.get("labels")
        desc = "arrays"
    elif isinstance(source, Dataset | tuple | np.ndarray | Sequence):
        samples, labels, desc = as_samples(source)
    else:
        raise HCPruneError(f"cannot read calibration data from a {type(source).__name__}; "
                           "give arrays, a Dataset, a .npz/.npy path or an image folder")
    samples = np.asarray(samples)
    if samples.dtype == object:
        raise HCPruneError("calibration samples must be a numeric array")
    if limit:
        samples = samples[:limit]
        labels = None if labels is None else np.asarray(labels)[:limit]
    samples = check_samples(samples, shape, dtype, name)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(samples),) or not np.issubdtype(labels.dtype, np.integer):
            raise HCPruneError(f"labels have shape {list(labels.shape)} and dtype "
                               f"{labels.dtype}; give one integer class index per sample "
                               f"([{len(samples)}])")
        labels = labels.astype(np.int64)
    return CalibrationData(samples, labels, desc)


def split_holdout(data: CalibrationData, fraction: float = 0.25, max_holdout: int = 256,
                  seed: int = 0) -> tuple[CalibrationData, CalibrationData | None]:
    """``(fit, held_out)``: a random ``fraction`` (at most ``max_holdout`` samples) set aside
    to measure agreement with the dense model; None when fewer than 4 samples."""
    n = len(data)
    k = min(int(round(n * fraction)), max_holdout)
    if n < 4 or k < 1:
        return data, None
    perm = np.random.default_rng(seed).permutation(n)
    return data.take(np.sort(perm[k:])), data.take(np.sort(perm[:k]))
