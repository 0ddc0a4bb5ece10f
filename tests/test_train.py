"""Real PyTorch training on digits: accuracy, determinism, early stopping, budget, divergence."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from search.spaces.base import TrainHParams
from search.training.data import load_dataset
from search.training.train import TrainingError, evaluate, train_candidate


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture()
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_small_cnn_learns_digits_fast(digits, one_thread):
    model = small_cnn()
    before = evaluate(model, digits.val)
    t0 = time.perf_counter()
    r = train_candidate(model, digits, TrainHParams(epochs=8, batch_size=64, learning_rate=0.05),
                        evaluate_test=True)
    wall = time.perf_counter() - t0
    assert before < 0.3
    assert r.val_accuracy > 0.8 and r.test_accuracy is not None and r.test_accuracy > 0.8
    assert wall < 30.0 and r.train_time_s <= wall
    assert r.epochs == len(r.history) and 1 <= r.best_epoch <= r.epochs
    assert r.val_accuracy == max(h["val_accuracy"] for h in r.history)
    # the best weights are the ones left in the model
    assert evaluate(model, digits.val) == pytest.approx(r.val_accuracy)


def test_deterministic_for_a_seed(digits, one_thread):
    hp = TrainHParams(epochs=2, batch_size=32, learning_rate=0.02, optimizer="adam")
    a = train_candidate(small_cnn(1), digits, hp, seed=3)
    b = train_candidate(small_cnn(1), digits, hp, seed=3)
    c = train_candidate(small_cnn(1), digits, hp, seed=4)
    strip = lambda r: [{k: v for k, v in h.items() if k not in ("time_s", "images_per_s")} for h in r.history]  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_time_budget_and_max_epochs(digits, one_thread):
    r = train_candidate(small_cnn(), digits, TrainHParams(epochs=50, batch_size=16),
                        time_budget_s=0.05)
    assert r.stop_reason == "time_budget" and r.early_stopped and r.epochs <= 2
    r2 = train_candidate(small_cnn(), digits, TrainHParams(epochs=50, batch_size=256), max_epochs=1)
    assert r2.epochs == 1 and r2.stop_reason == "completed"


def test_patience_stops_a_model_that_cannot_learn(digits):
    model = small_cnn()
    # lr 0: weights never change, validation accuracy never improves after epoch 1
    r = train_candidate(model, digits, TrainHParams(epochs=10, learning_rate=0.0, batch_size=256),
                        patience=2)
    assert r.stop_reason == "patience" and r.epochs == 3


def test_divergence_raises_training_error(digits):
    torch.manual_seed(0)
    # a huge learning rate overflows the weights of a two-layer MLP to inf, the loss to NaN
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 10))
    with pytest.raises(TrainingError, match="diverged: loss is nan"):
        train_candidate(model, digits, TrainHParams(epochs=3, learning_rate=1e20, batch_size=64,
                                                    weight_decay=0.0, optimizer="sgd"))


def test_resize_and_step_schedule(digits):
    model = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    r = train_candidate(model, digits, TrainHParams(epochs=4, batch_size=512, schedule="step"), resize_to=16,
                        patience=10)
    assert seen and all(s == (16, 16) for s in seen)
    lrs = [h["lr"] for h in r.history]
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.0005)
    with pytest.raises(ValueError, match="optimizer 'lion'"):
        TrainHParams(optimizer="lion")


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "constant"])
def test_every_schedule_shapes_the_learning_rate(schedule):
    from search.training.train import lr_factor

    f = [lr_factor(schedule, s, 100, 10) for s in range(100)]
    assert all(0 < v <= 1.0 for v in f)
    if schedule == "onecycle":  # own warm-up: rises to the peak at 30 %, then falls far below
        assert f[0] < 0.1 and max(f) == pytest.approx(1.0, abs=1e-3) and f[-1] < 0.01
    else:
        assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up
        assert (f[-1] < 0.05) == (schedule in ("cosine", "step"))


def test_every_new_gene_changes_the_training(digits, one_thread):
    """No gene without effect: label smoothing, augmentation, schedule, warm-up and optimizer
    each change the training's numbers (the same seed and initial weights otherwise)."""
    base = TrainHParams(epochs=2, batch_size=64, learning_rate=0.05)
    ref = train_candidate(small_cnn(1), digits, base, seed=1, patience=None)
    for change in ({"label_smoothing": 0.1}, {"augment": 1.0}, {"schedule": "onecycle"},
                   {"warmup_epochs": 1}, {"optimizer": "adamw"}, {"optimizer": "sgd-nesterov"}):
        from dataclasses import replace

        r = train_candidate(small_cnn(1), digits, replace(base, **change), seed=1, patience=None)
        assert r.history[-1]["train_loss"] != ref.history[-1]["train_loss"], change
    assert ref.images_per_s > 0 and ref.device == "cpu" and not ref.amp


def test_the_augment_gene_sets_the_crop_and_flips():
    from search.training.train import genome_augment

    assert genome_augment(0.0, 32, flip=True) is None
    a = genome_augment(1.0, 32, flip=True)
    assert a.crop_padding == 4 and a.flip and genome_augment(0.5, 32, flip=False).crop_padding == 2
