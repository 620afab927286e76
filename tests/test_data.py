"""Tests for npk.data: the embedded digits, the idx parser, real Fashion-MNIST / CIFAR-10 files, bad input."""
import gzip
import os
import pickle
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from npk import data

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path(os.environ.get("NPK_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
DIGIT_COUNTS = np.bincount(load_digits().target)          # 178, 182, 177, 183, 181, 182, 181, 179, 174, 180
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def raw_ints(X, scale):
    """Unscaled integer pixels of an unstandardised tensor (asserting they are exact)."""
    v = X.double().numpy() * scale
    assert np.abs(v - np.round(v)).max() < 1e-4
    return np.round(v).astype(np.int64)


def channel_moments(X):
    """Per-channel mean and population std over samples and positions, in float64."""
    x = X.numpy().reshape(X.shape[0], X.shape[1], -1)             # numpy: far faster than torch here
    n = x.shape[0] * x.shape[2]
    mean = x.mean(axis=(0, 2), dtype=np.float64)
    sq = np.einsum("nck,nck->c", x, x, dtype=np.float64) / n
    return torch.from_numpy(mean), torch.from_numpy(np.sqrt(sq - mean ** 2))


# ------------------------------------------------------------------------------------------ digits
@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def digits_raw():
    return data.load("digits", standardize=False)


def test_digits_shapes_and_types(digits):
    assert digits.X_train.shape == (1437, 1, 8, 8) and digits.X_test.shape == (360, 1, 8, 8)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.X_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.shape == (1, 8, 8) and tuple(digits.X_test.shape[1:]) == digits.shape
    assert digits.classes == list(range(10)) and digits.n_classes == 10 and digits.name == "digits"


def test_digits_split_is_stratified_partition(digits_raw):
    ytr, yte = digits_raw.y_train.numpy(), digits_raw.y_test.numpy()
    assert np.array_equal(np.bincount(ytr) + np.bincount(yte), DIGIT_COUNTS)
    assert np.all(np.abs(np.bincount(yte) - DIGIT_COUNTS * 360 / 1797) < 1)
    # train + test is exactly the bundled set: same images (pixel / 16, exact), each once
    both = np.concatenate([raw_ints(digits_raw.X_train, 16).reshape(1437, 64),
                           raw_ints(digits_raw.X_test, 16).reshape(360, 64)])
    both = np.column_stack([both, np.concatenate([ytr, yte])])
    d = load_digits()
    full = np.column_stack([d.images.reshape(-1, 64).astype(np.int64), d.target])
    assert np.array_equal(np.unique(both, axis=0), np.unique(full, axis=0))
    assert len(np.unique(full, axis=0)) == len(full)


def test_digits_standardised_per_channel_on_train(digits, digits_raw):
    mean, std = channel_moments(digits.X_train)
    assert abs(mean.item()) < 1e-6 and abs(std.item() - 1) < 1e-6
    raw = digits_raw.X_train.double()
    assert digits.info["mean"][0] == pytest.approx(raw.mean().item(), abs=1e-12)
    assert digits.info["std"][0] == pytest.approx(raw.std(unbiased=False).item(), abs=1e-12)
    # the test split uses the train statistics: close to, but not exactly, centred
    expected = (digits_raw.X_test.double() - digits.info["mean"][0]) / digits.info["std"][0]
    assert torch.allclose(digits.X_test.double(), expected, atol=1e-5)
    assert 1e-6 < abs(digits.X_test.double().mean().item()) < 0.1


def test_unstandardised_pixels_are_scaled_integers(digits_raw):
    v = raw_ints(digits_raw.X_train, 16)
    assert v.min() == 0 and v.max() == 16 and "mean" not in digits_raw.info


def test_flatten(digits):
    flat = data.load("digits", flatten=True)
    assert flat.X_train.shape == (1437, 64) and flat.X_test.shape == (360, 64) and flat.shape == (64,)
    assert torch.equal(flat.X_train, digits.X_train.reshape(1437, 64))
    f2 = digits.flat()
    assert torch.equal(f2.X_test, flat.X_test) and f2.shape == (64,) and digits.shape == (1, 8, 8)
    assert f2.checksum() == flat.checksum()


def test_float64(digits):
    d64 = data.load("digits", dtype=torch.float64)
    assert d64.X_train.dtype == torch.float64
    assert torch.allclose(d64.X_train.float(), digits.X_train, atol=1e-6)
    assert abs(d64.X_train.mean().item()) < 1e-12


def test_binary_4_vs_7(digits_raw):
    b = data.load("digits", binary=(4, 7), standardize=False)
    assert b.classes == [4, 7] and b.n_classes == 2
    for split in ("train", "test"):
        y_all, X_all = getattr(digits_raw, "y_" + split), getattr(digits_raw, "X_" + split)
        keep = (y_all == 4) | (y_all == 7)
        assert set(getattr(b, "y_" + split).tolist()) == {0, 1}
        assert torch.equal(getattr(b, "X_" + split), X_all[keep])
        assert torch.equal(getattr(b, "y_" + split), (y_all[keep] == 7).long())
    assert len(b.y_train) + len(b.y_test) == DIGIT_COUNTS[4] + DIGIT_COUNTS[7]


def test_classes_relabel_in_given_order(digits_raw):
    c = data.load("digits", classes=[7, 4, 1], standardize=False)
    assert c.classes == [7, 4, 1]
    orig = digits_raw.y_test[(digits_raw.y_test == 7) | (digits_raw.y_test == 4) | (digits_raw.y_test == 1)]
    assert set(c.y_test.tolist()) == {0, 1, 2}
    assert torch.equal(torch.tensor([7, 4, 1])[c.y_test], orig)


def test_subsets_are_stratified_and_sized(digits_raw):
    s = data.load("digits", n_train=100, n_test=50, standardize=False)
    assert s.X_train.shape == (100, 1, 8, 8) and s.X_test.shape == (50, 1, 8, 8)
    tr_counts = np.bincount(digits_raw.y_train.numpy())
    assert np.all(np.abs(np.bincount(s.y_train.numpy(), minlength=10) - tr_counts * 100 / 1437) < 1)
    # a subset of the full split: every chosen image is one of the originals, with its label
    full = {(tuple(x), y) for x, y in zip(raw_ints(digits_raw.X_train, 16).reshape(-1, 64).tolist(),
                                         digits_raw.y_train.tolist())}
    assert all((tuple(x), y) in full for x, y in zip(raw_ints(s.X_train, 16).reshape(-1, 64).tolist(),
                                                      s.y_train.tolist()))


def test_deterministic_by_seed():
    a = data.load("digits", n_train=200, n_test=40, seed=3)
    b = data.load("digits", n_train=200, n_test=40, seed=3)
    c = data.load("digits", n_train=200, n_test=40, seed=4)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert a.checksum() == b.checksum()
    assert not torch.equal(a.X_train, c.X_train) and a.checksum() != c.checksum()
    # the test draw does not depend on n_train (compare unstandardised: the statistics come from train)
    e = data.load("digits", n_train=200, n_test=40, seed=3, standardize=False)
    f = data.load("digits", n_train=300, n_test=40, seed=3, standardize=False)
    assert torch.equal(e.X_test, f.X_test) and torch.equal(e.y_test, a.y_test)


def test_checksum_stable_and_sensitive(digits):
    again = data.load("digits")
    h = digits.checksum()
    assert len(h) == 64 and int(h, 16) >= 0 and again.checksum() == h
    assert data.load("digits", n_train=1000).checksum() != h
    changed = data.Dataset(digits.X_train.clone(), digits.y_train, digits.X_test, digits.y_test,
                           "digits", digits.classes, digits.shape)
    changed.X_train[5, 0, 3, 3] += 1e-3
    assert changed.checksum() != h


# --------------------------------------------------------------------------------------------- idx
def idx_bytes(a: np.ndarray, type_code: int) -> bytes:
    be = a.astype(a.dtype.newbyteorder(">"))
    return bytes([0, 0, type_code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + be.tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    i16 = rng.integers(-30000, 30000, (7,), dtype=np.int16)
    for a, code in ((u8, 0x08), (i16, 0x0B)):
        p = tmp_path / (f"a{code}.idx" + (".gz" if compress else ""))
        p.write_bytes(gzip.compress(idx_bytes(a, code)) if compress else idx_bytes(a, code))
        out = data.read_idx(p)
        assert out.shape == a.shape and out.dtype == a.dtype and np.array_equal(out, a)


def test_idx_corrupt_magic_and_size(tmp_path):
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08)
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match=r"bad-magic: bad idx magic number 01020802"):
        data.read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(good[:-1]))
    with pytest.raises(ValueError, match=r"size mismatch.*\(3, 4\).*24 bytes.*23 bytes"):
        data.read_idx(short)


def write_fake_mnist(d: Path, n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10}
    d.mkdir(parents=True, exist_ok=True)
    for i, (stem, a) in enumerate(arrays.items()):                 # mix .gz and uncompressed names
        b = idx_bytes(a, 0x08)
        if i % 2:
            (d / (stem + ".gz")).write_bytes(gzip.compress(b))
        else:
            (d / stem).write_bytes(b)
    return arrays


def test_mnist_loader_on_tiny_files(tmp_path):
    arrays = write_fake_mnist(tmp_path / "m")
    m = data.load("mnist", root=tmp_path / "m", standardize=False)
    assert m.shape == (1, 28, 28) and m.classes == list(range(10)) and m.X_train.shape == (20, 1, 28, 28)
    assert np.array_equal(raw_ints(m.X_train, 255)[:, 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(m.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    b = data.load("mnist", root=tmp_path / "m", binary=(4, 7), standardize=False)
    assert b.y_train.tolist() == [0, 1, 0, 1] and b.classes == [4, 7]
    assert np.array_equal(raw_ints(b.X_train, 255)[:, 0], arrays["train-images-idx3-ubyte"][[4, 7, 14, 17]])


def test_mnist_label_count_mismatch(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(9, np.uint8), 8)))
    with pytest.raises(ValueError, match=r"t10k-labels.*expected 10 labels"):
        data.load("mnist", root=tmp_path)


# ----------------------------------------------------------------------------------- Fashion-MNIST
@pytest.fixture(scope="module")
def fashion():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST files not in {FASHION_DIR} (apt-get install dataset-fashion-mnist, "
                    "or set NPK_FASHION_MNIST to a directory with the four idx files)")
    return data.load("fashion-mnist", root=FASHION_DIR, standardize=False)


@pytest.mark.data
def test_fashion_mnist_real_files(fashion):
    assert fashion.X_train.shape == (60000, 1, 28, 28) and fashion.X_test.shape == (10000, 1, 28, 28)
    assert fashion.shape == (1, 28, 28) and fashion.n_classes == 10
    assert np.array_equal(np.bincount(fashion.y_train.numpy()), [6000] * 10)
    assert np.array_equal(np.bincount(fashion.y_test.numpy()), [1000] * 10)
    assert fashion.y_train[0].item() == 9 and fashion.classes[9] == "Ankle boot"
    assert fashion.y_train[:5].tolist() == [9, 0, 0, 3, 0]
    assert fashion.X_train.min().item() == 0 and fashion.X_train.max().item() == 1
    mean, std = channel_moments(fashion.X_train)
    assert mean.item() == pytest.approx(0.2860, abs=1e-4) and std.item() == pytest.approx(0.3530, abs=1e-4)


# ---------------------------------------------------------------------------------------- CIFAR-10
def shared_data_dir():
    for d in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if (d / "cifar10-jpeg75.npz").is_file() and (d / "cifar10_jpeg75_to_batches.py").is_file():
            return d
    return None


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    """The CIFAR-10 JPEG copy written once per session in the official python layout."""
    src = shared_data_dir()
    if src is None:
        pytest.skip("no shared/data/cifar10-jpeg75.npz beside the repository or in /work/shared/data")
    pytest.importorskip("PIL", reason="the CIFAR-10 converter needs Pillow")
    out = tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, str(src / "cifar10_jpeg75_to_batches.py"), str(src / "cifar10-jpeg75.npz"),
                    str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def cifar(cifar_root):
    return data.load("cifar10", root=cifar_root, standardize=False)


@pytest.mark.data
def test_cifar10_real_files(cifar):
    assert cifar.X_train.shape == (50000, 3, 32, 32) and cifar.X_test.shape == (10000, 3, 32, 32)
    assert cifar.shape == (3, 32, 32) and cifar.classes == CIFAR10_NAMES
    assert np.array_equal(np.bincount(cifar.y_train.numpy()), [5000] * 10)
    assert np.array_equal(np.bincount(cifar.y_test.numpy()), [1000] * 10)
    mean, _ = channel_moments(cifar.X_train)
    assert (mean * 255).tolist() == pytest.approx([125.27, 122.93, 113.86], abs=0.01)
    assert cifar.X_train.min().item() == 0 and cifar.X_train.max().item() == 1


@pytest.mark.data
def test_cifar10_standardised_binary_from_batches_folder(cifar_root, cifar):
    b = data.load("cifar10", root=cifar_root / "cifar-10-batches-py", binary=("cat", "dog"))
    assert b.classes == ["cat", "dog"] and b.X_train.shape == (10000, 3, 32, 32)
    assert np.array_equal(np.bincount(b.y_train.numpy()), [5000, 5000])
    mean, std = channel_moments(b.X_train)
    assert torch.all(mean.abs() < 1e-6) and torch.all((std - 1).abs() < 1e-6)
    keep = (cifar.y_test == 3) | (cifar.y_test == 5)
    expected = (cifar.X_test[keep].double() - torch.tensor(b.info["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(b.info["std"]).view(1, 3, 1, 1)
    assert torch.allclose(b.X_test.double(), expected, atol=1e-5)


# ------------------------------------------------------------------------------- CIFAR-100 (fake)
def write_fake_cifar100(d: Path, numpy_core_globals=False):
    """Tiny cifar-100-python/{train,test,meta}: 2 train and 1 test image per fine class."""
    rng = np.random.default_rng(1)
    d.mkdir(parents=True)
    fine = {"train": np.repeat(np.arange(100), 2), "test": np.arange(100)}
    for split, y in fine.items():
        obj = {b"data": rng.integers(0, 256, (len(y), 3072), dtype=np.uint8), b"fine_labels": y.tolist(),
               b"coarse_labels": (y // 5).tolist(), b"filenames": [b"x.png"] * len(y)}
        blob = pickle.dumps(obj, protocol=2)
        if numpy_core_globals:                                      # as in the official (numpy 1) files
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (d / split).write_bytes(blob)
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))


@pytest.mark.parametrize("numpy_core_globals", [False, True])
def test_cifar100_label_modes(tmp_path, numpy_core_globals):
    write_fake_cifar100(tmp_path / "cifar-100-python", numpy_core_globals)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fine = data.load("CIFAR-100", root=tmp_path, standardize=False)
        coarse = data.load("cifar100", root=tmp_path / "cifar-100-python", label_mode="coarse", n_train=40)
    assert fine.name == "cifar100" and fine.n_classes == 100 and fine.classes[7] == "f7"
    assert fine.X_train.shape == (200, 3, 32, 32) and fine.y_train[:4].tolist() == [0, 0, 1, 1]
    assert coarse.n_classes == 20 and coarse.info["label_mode"] == "coarse"
    assert np.array_equal(np.bincount(coarse.y_train.numpy()), [2] * 20)
    assert coarse.y_test.tolist() == (np.arange(100) // 5).tolist()


def test_pickle_with_code_is_refused(tmp_path):
    write_fake_cifar100(tmp_path / "cifar-100-python")
    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps({b"x": os.getcwd}, protocol=2))
    with pytest.raises(ValueError, match=r"meta.*refusing to load"):
        data.load("cifar100", root=tmp_path)


# -------------------------------------------------------------------------------------- bad input
def test_missing_directory_says_what_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load("fashion-mnist", root=tmp_path / "nowhere")
    msg = str(e.value)
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz", str(tmp_path / "nowhere"), "apt-get install dataset-fashion-mnist",
              "root="):
        assert f in msg
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data_batch_1.*cifar-10-python\.tar\.gz"):
        data.load("cifar10", root=tmp_path)


def test_missing_files_are_named(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing t10k-images-idx3-ubyte\.gz\)"):
        data.load("mnist", root=tmp_path)


def test_too_many_samples():
    with pytest.raises(ValueError, match=r"n_train=2000 is more than the 1437 train samples"):
        data.load("digits", n_train=2000)
    with pytest.raises(ValueError, match=r"n_test=361 is more than the 360 test"):
        data.load("digits", n_test=361)
    n47 = int(DIGIT_COUNTS[4] + DIGIT_COUNTS[7])
    with pytest.raises(ValueError, match=r"more than the \d+ train") as e:
        data.load("digits", binary=(4, 7), n_train=n47)
    assert int(str(e.value).split("the ")[1].split()[0]) < n47
    with pytest.raises(ValueError, match="positive integer"):
        data.load("digits", n_train=0)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"unknown data set 'svhn'; known: digits, mnist, fashion-mnist, "
                                         r"cifar10, cifar100"):
        data.load("svhn")


def test_unknown_class_labels():
    with pytest.raises(ValueError, match=r"unknown class label 10; valid labels are 0\.\.9"):
        data.load("digits", classes=[1, 10])
    with pytest.raises(ValueError, match=r"unknown class label 'cat'"):
        data.load("digits", binary=("cat", "dog"))
    with pytest.raises(ValueError, match="twice"):
        data.load("digits", binary=(3, 3))
    with pytest.raises(ValueError, match="pair"):
        data.load("digits", binary=(1, 2, 3))
    with pytest.raises(ValueError, match="only to cifar100"):
        data.load("digits", label_mode="coarse")
