"""Tests for npk.train: learning, determinism, checkpoint resumption, metrics, bad input."""
import copy
import types

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from npk.models.fc import DNN
from npk.train import CHECKPOINT_FILE, accuracy, evaluate, train, unpack_hits


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits, 64-d, standardised with the training split's mean and std; 1400 / 397 split."""
    d = load_digits()
    X, y = torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    mu, sd = X[tr].mean(0), X[tr].std(0).clamp_min(1e-6)
    return types.SimpleNamespace(X_train=(X[tr] - mu) / sd, y_train=y[tr], X_test=(X[te] - mu) / sd, y_test=y[te])


@pytest.fixture(scope="module")
def small(digits):
    """A 300 / 100 subset for the tests that only need a few quick epochs."""
    return types.SimpleNamespace(X_train=digits.X_train[:300], y_train=digits.y_train[:300],
                                 X_test=digits.X_test[:100], y_test=digits.y_test[:100])


def binary(data, a=0, b=1):
    """Digits a vs b with labels 0 / 1."""
    def pick(X, y):
        keep = (y == a) | (y == b)
        return X[keep], (y[keep] == b).long()
    (Xtr, ytr), (Xte, yte) = pick(data.X_train, data.y_train), pick(data.X_test, data.y_test)
    return types.SimpleNamespace(X_train=Xtr, y_train=ytr, X_test=Xte, y_test=yte)


def net(d_out=10, seed=0):
    torch.manual_seed(seed)
    return DNN(64, [32, 32], d_out)


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_dnn_learns_digits(digits):
    # measured: test accuracy 0.960 after 4 epochs (Adam 1e-2, batch 32, widths 32, 32)
    result = train(net(), digits, epochs=4, lr=1e-2, optimizer="adam")  # with the progress bar
    assert result.final_test_acc > 0.93
    assert result.train_loss[-1] < 0.5 * result.train_loss[0]
    assert len(result.train_acc) == len(result.test_acc) == 4 and result.eval_epochs == [1, 2, 3, 4]
    assert result.best_test_acc == max(result.test_acc)
    assert result.test_acc[result.best_epoch - 1] == result.best_test_acc
    assert result.wall_time > 0


def test_same_seed_same_history_other_seed_differs(small):
    runs = [(train(m, small, epochs=2, lr=0.05, momentum=0.9, seed=s, progress=False), m)
            for m, s in ((net(), 3), (net(), 3), (net(), 4))]
    (a, ma), (b, mb), (c, mc) = runs
    assert (a.train_loss, a.train_acc, a.test_loss, a.test_acc) == (b.train_loss, b.train_acc, b.test_loss, b.test_acc)
    assert same_weights(ma, mb)
    assert a.train_loss != c.train_loss and not same_weights(ma, mc)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(small, tmp_path):
    opts = dict(epochs=3, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-3, seed=1, progress=False)
    straight = net()
    full = train(straight, small, **opts)

    def crash_after_epoch_2(epoch, model):
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(net(), small, checkpoint_dir=tmp_path, callback=crash_after_epoch_2, **opts)
    assert (tmp_path / CHECKPOINT_FILE).exists() and not (tmp_path / (CHECKPOINT_FILE + ".tmp")).exists()

    resumed_model = net(seed=99)  # its own weights are replaced by the checkpoint's
    epochs_run = []
    resumed = train(resumed_model, small, checkpoint_dir=tmp_path, callback=lambda e, m: epochs_run.append(e), **opts)
    assert epochs_run == [3]
    assert same_weights(resumed_model, straight)
    assert (resumed.train_loss, resumed.test_acc, resumed.eval_epochs) == (full.train_loss, full.test_acc, full.eval_epochs)

    # asking for more epochs continues from epoch 3; other settings are refused
    more = train(resumed_model, small, checkpoint_dir=tmp_path, **{**opts, "epochs": 4})
    assert len(more.train_loss) == 4 and more.train_loss[:3] == full.train_loss
    with pytest.raises(ValueError, match="other settings.*lr"):
        train(net(), small, checkpoint_dir=tmp_path, **{**opts, "epochs": 5, "lr": 0.1})
    with pytest.raises(ValueError, match="already at epoch 4"):
        train(net(), small, checkpoint_dir=tmp_path, **{**opts, "epochs": 2})


def test_keep_best_state_and_callback_epochs(small):
    seen = []
    model = net()
    result = train(model, small, epochs=3, lr=0.05, keep_best=True, progress=False,
                   callback=lambda epoch, m: seen.append((epoch, accuracy(m, small.X_test, small.y_test))))
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert [acc for _, acc in seen[1:]] == result.test_acc
    best = net()
    best.load_state_dict(result.best_state)
    assert accuracy(best, small.X_test, small.y_test) == result.best_test_acc


def test_eval_every_evaluates_every_kth_and_the_last_epoch(small):
    result = train(net(), small, epochs=5, lr=0.05, eval_every=2, progress=False)
    assert result.eval_epochs == [2, 4, 5] and len(result.test_acc) == 3 and len(result.train_loss) == 5


def test_frozen_parameters_stay_fixed_even_with_weight_decay(small):
    model = net()
    first = model.value_layers[0]
    for p in first.parameters():
        p.requires_grad_(False)
    before = copy.deepcopy(model)
    train(model, small, epochs=1, lr=0.05, weight_decay=0.1, progress=False)
    assert torch.equal(first.weight, before.value_layers[0].weight)
    assert not torch.equal(model.value_layers[1].weight, before.value_layers[1].weight)


@pytest.mark.parametrize("d_out", [10, 1])
def test_evaluate_matches_the_stated_losses_and_prediction_rules(digits, d_out):
    data = digits if d_out == 10 else binary(digits)
    model, X, y = net(d_out), data.X_test, data.y_test
    with torch.no_grad():
        out = model(X)
    if d_out == 1:
        z = out[:, 0]
        ce = F.binary_cross_entropy_with_logits(z, y.float())
        mse = ((z - (2 * y - 1)) ** 2).mean()
        acc = ((z > 0).long() == y).double().mean()
    else:
        ce = F.cross_entropy(out, y)
        mse = ((out - F.one_hot(y, 10)) ** 2).sum(1).mean()
        acc = (out.argmax(1) == y).double().mean()
    for loss, expected in (("ce", ce), ("mse", mse)):
        value, accuracy_ = evaluate(model, X, y, loss=loss, batch_size=37)  # 37: uneven batches
        assert value == pytest.approx(float(expected), rel=1e-5)
        assert accuracy_ == pytest.approx(float(acc), abs=1e-12)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_one_output_binary_task_learns(digits, loss):
    # measured on 4 vs 9 (282 / 79 images) after 3 epochs: 0.987 (ce), 0.962 (mse)
    data = binary(digits, 4, 9)
    result = train(net(d_out=1), data, epochs=3, lr=0.01, momentum=0.9, loss=loss, progress=False)
    assert result.final_test_acc > 0.95


def test_float64_model_trains_on_float32_data(small):
    model = net().double()
    result = train(model, small, epochs=3, lr=0.05, momentum=0.9, progress=False)  # measured: 0.90
    assert model.value_layers[0].weight.dtype == torch.float64 and result.final_test_acc > 0.8


def test_divergence_is_reported(small):
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(net(), small, epochs=1, lr=1e30, loss="mse", progress=False)


def test_bad_input(small):
    with pytest.raises(ValueError, match=r"optimizer must be one of \('sgd', 'adam'\)"):
        train(net(), small, epochs=1, lr=0.1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="loss must be one of"):
        train(net(), small, epochs=1, lr=0.1, loss="hinge")
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        train(net(), small, epochs=0, lr=0.1)
    with pytest.raises(ValueError, match="lr must be positive"):
        train(net(), small, epochs=1, lr=0.0)
    with pytest.raises(ValueError, match=r"train labels range over 0 \.\. 9, but a model with d_out = 5 "
                                         r"outputs takes labels 0 \.\. 4"):
        train(net(d_out=5), small, epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="one output takes labels 0 / 1"):
        train(net(d_out=1), small, epochs=1, lr=0.1)
    bad = types.SimpleNamespace(**{**vars(small), "y_test": small.y_test.float()})
    with pytest.raises(ValueError, match="test labels must be an integer tensor"):
        train(net(), bad, epochs=1, lr=0.1)
    with pytest.raises(TypeError, match="lacks X_test, y_test"):
        train(net(), types.SimpleNamespace(X_train=small.X_train, y_train=small.y_train), epochs=1, lr=0.1)
    frozen = net()
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(frozen, small, epochs=1, lr=0.1)


# ------------------------------------------------------------------------------------------ selection on validation
def with_validation(data, n_val=100):
    return types.SimpleNamespace(X_train=data.X_train[n_val:], y_train=data.y_train[n_val:], X_test=data.X_test,
                                 y_test=data.y_test, X_val=data.X_train[:n_val], y_val=data.y_train[:n_val])


def test_selection_on_validation_and_patience(small, tmp_path):
    data = with_validation(small)
    result = train(net(), data, epochs=30, lr=5e-2, optimizer="adam", patience=2, keep_best=True, progress=False,
                   checkpoint_dir=tmp_path)
    best_val = max(result.val_acc)
    assert result.selected_on == "validation"
    assert result.val_acc[result.eval_epochs.index(result.selected_epoch)] == best_val
    assert all(v < best_val for v in result.val_acc[:result.eval_epochs.index(result.selected_epoch)])  # the first best
    # patience 2: exactly two evaluations after the selected one, unless the 30 epochs ran out first
    assert result.stopped_early and result.epochs_run == result.selected_epoch + 2 < 30
    assert result.selected_test_acc == result.test_acc[result.selected_epoch - 1]
    selected = net()
    selected.load_state_dict(result.best_state)               # keep_best keeps the selected epoch's weights
    assert accuracy(selected, data.X_test, data.y_test) == result.selected_test_acc
    hits = unpack_hits(result.selected_test_correct, len(data.y_test))
    assert hits.mean() == result.selected_test_acc
    assert hits.tolist() == (selected(data.X_test).argmax(1) == data.y_test).tolist()
    again = train(net(), data, epochs=30, lr=5e-2, optimizer="adam", patience=2, progress=False, checkpoint_dir=tmp_path)
    assert again.eval_epochs == result.eval_epochs and again.stopped_early   # a finished early stop stays stopped


def test_patience_without_validation_is_refused(small):
    with pytest.raises(ValueError, match="patience needs a validation split"):
        train(net(), small, epochs=2, lr=1e-2, patience=3, progress=False)
    with pytest.raises(ValueError, match="patience must be None or a positive int"):
        train(net(), with_validation(small), epochs=2, lr=1e-2, patience=0, progress=False)


def test_hold_out_is_stratified_and_disjoint():
    from npk.data import load
    data = load("digits")
    split = data.hold_out(0.1, seed=3)
    assert len(split.y_val) == round(0.1 * len(data.y_train)) and len(split.y_train) + len(split.y_val) == len(data.y_train)
    counts = torch.bincount(split.y_val, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 16          # 144 of 1,437 in 10 near-equal classes
    rows = {tuple(x.flatten().tolist()) for x in split.X_train}
    assert not any(tuple(x.flatten().tolist()) in rows for x in split.X_val[:20])
    assert split.checksum() != data.checksum() and split.flat().X_val.shape == (len(split.y_val), 64)
    with pytest.raises(ValueError, match="validation fraction must be a number in"):
        data.hold_out(1.5)
