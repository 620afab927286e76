"""load("imagefolder", root=...): split/class/*.png|jpg read with Pillow, on a tiny folder built here."""
import numpy as np
import pytest
import torch
from PIL import Image

from npk.data import load


def write_folder(root, mode="RGB", size=(5, 4), per_class=3, seed=0, fmt="png"):
    """root/{train,test}/{cat,ant,bee}/NNNN.png with random pixels; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", per_class), ("test", 2)):
        images, labels = [], []
        for k, c in enumerate(sorted(["cat", "ant", "bee"])):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(a, mode).save(root / split / c / f"{i:04d}.{fmt}")
                images.append(a)
                labels.append(k)
        written[split] = (np.stack(images), np.array(labels))
    return written


def test_an_image_folder_loads_exactly(tmp_path):
    written = write_folder(tmp_path)
    data = load("imagefolder", root=tmp_path, standardize=False, dtype=torch.float64)
    assert data.classes == ["ant", "bee", "cat"] and data.shape == (3, 4, 5)
    x, y = written["train"]
    np.testing.assert_array_equal(data.X_train.numpy(), x.transpose(0, 3, 1, 2) / 255.0)
    np.testing.assert_array_equal(data.y_train.numpy(), y)
    assert data.X_test.shape == (6, 3, 4, 5) and data.y_test.tolist() == [0, 0, 1, 1, 2, 2]


def test_gray_pngs_give_one_channel_and_subsets_work(tmp_path):
    written = write_folder(tmp_path, mode="L", per_class=4)
    data = load("imagefolder", root=tmp_path, n_train=6, standardize=False)
    assert data.shape == (1, 4, 5) and np.bincount(data.y_train.numpy()).tolist() == [2, 2, 2]
    full = load("imagefolder", root=tmp_path, standardize=False, flatten=True)
    np.testing.assert_allclose(full.X_train.numpy(), written["train"][0].reshape(12, -1) / 255.0, atol=1e-7)


def test_jpegs_in_the_cifar10_copys_layout_load(tmp_path):
    write_folder(tmp_path, size=(32, 32), fmt="jpg")
    data = load("imagefolder", root=tmp_path)
    assert data.X_train.shape == (9, 3, 32, 32)
    assert data.X_train.mean(dim=(0, 2, 3)).abs().max().item() < 1e-5     # standardised per channel


def test_imagefolder_needs_a_root():
    with pytest.raises(ValueError, match="needs root=.*train/<class>"):
        load("imagefolder")


@pytest.mark.parametrize("break_it, error, match", [
    (lambda r: (r / "test").rename(r / "val"), FileNotFoundError, "test: no such directory"),
    (lambda r: (r / "test" / "dog").mkdir(), ValueError, r"\['dog'\] that .* lacks"),
    (lambda r: Image.new("RGB", (6, 4)).save(r / "train" / "ant" / "9999.png"), ValueError, "differs from"),
    (lambda r: (r / "train" / "ant" / "0000.png").write_bytes(b"not a png"), ValueError, "not a readable image"),
])
def test_bad_image_folders_fail_in_one_line(tmp_path, break_it, error, match):
    write_folder(tmp_path)
    break_it(tmp_path)
    with pytest.raises(error, match=match):
        load("imagefolder", root=tmp_path)
