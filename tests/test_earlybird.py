"""Early-Bird tickets: masks from BN gammas, the FIFO criterion, and a real pruned menndl ticket."""
from __future__ import annotations

import pytest
import torch

from search.training.earlybird import (EarlyBirdCallback, EarlyBirdDetector, EarlyBirdSettings, build_ticket,
                                       mask_distance, mask_from_gammas)


def test_mask_and_distance_on_constructed_gammas():
    g = [torch.tensor([0.1, -0.9, 0.5]), torch.tensor([0.3, 0.05, -0.7, 0.2])]
    m = mask_from_gammas(g, 0.5)  # 7 channels, 3 smallest |gamma| (0.05, 0.1, 0.2) pruned
    assert m.tolist() == [False, True, True, True, False, True, False]
    other = m.clone()
    other[0] = True
    other[1] = False
    assert mask_distance(m, other) == pytest.approx(2 / 7)
    with pytest.raises(ValueError, match="differ in size"):
        mask_distance(m, m[:3])
    with pytest.raises(ValueError, match="no batch-norm"):
        mask_from_gammas([], 0.5)


def test_detector_fires_exactly_when_last_window_distances_below_eps():
    settings = EarlyBirdSettings(ratio=0.5, eps=0.1, window=3)
    det = EarlyBirdDetector(settings)
    n = 20
    base = torch.arange(1, n + 1, dtype=torch.float)  # distinct magnitudes: top half kept
    flips = [0, 6, 4, 0, 1, 0, 0, 0]  # channels swapped between epochs -> distance 2*k/n (k pairs)
    fired = []
    g = base.clone()
    for k in flips:
        for j in range(k // 2):  # swap channel j (pruned) with channel n-1-j (kept)
            g[j], g[n - 1 - j] = g[n - 1 - j].clone(), g[j].clone()
        fired.append(det.update_mask(mask_from_gammas([g], settings.ratio)))
    expected_d = [2 * (k // 2) / n for k in flips[1:]]
    assert det.distances == pytest.approx(expected_d)  # [0.3, 0.2, 0, 0, 0, 0, 0]
    # window 3 of distances below 0.1 first holds after the 5th distance, i.e. update 6
    assert fired == [False] * 5 + [True] * 3
    assert det.drawn_at == 6


def _tiny_digits():
    from search.training.data import load_dataset

    return load_dataset("digits", seed=0, limit=600)


def test_ticket_on_real_menndl_network_builds_exports_is_smaller_and_trains(tmp_path):
    from search.training.exporting import export_onnx
    from search.memory import peak_activation_kb
    from search.spaces.base import TaskSpec, TrainHParams
    from search.spaces.menndl import ConvGene, HeadGene, MenndlGenome, MenndlSpace, PoolGene
    from search.training.train import train_candidate

    torch.set_num_threads(1)
    task = TaskSpec(1, 8, 10)
    genome = MenndlGenome((ConvGene(16), ConvGene(16, skip_from=1), PoolGene(), ConvGene(24, skip_from=3)),
                          HeadGene(hidden=32, grid=2), TrainHParams(learning_rate=0.05, batch_size=64, epochs=4))
    net = MenndlSpace().build(genome, task)
    splits = _tiny_digits()
    cb = EarlyBirdCallback(detector=EarlyBirdDetector(EarlyBirdSettings(ratio=0.5, window=2, eps=0.5)))
    res = train_candidate(net, splits, genome.hparams, callbacks=[cb], patience=10, restore_best=False)
    assert len(cb.detector.distances) == res.epochs - 1
    assert res.stop_reason in ("callback", "completed")
    small_genome, ticket = build_ticket(genome, net, cb.detector.mask, task)
    assert sum(p.numel() for p in ticket.parameters()) < sum(p.numel() for p in net.parameters())
    assert [l.filters for l in small_genome.layers if isinstance(l, ConvGene)] != [16, 16, 24]
    # weight copying: with every channel kept the "ticket" computes exactly the trained network
    x = splits.val.get_batch(torch.arange(32))[0]
    _, same = build_ticket(genome, net, torch.ones_like(cb.detector.mask), task)
    net.eval()
    same.eval()
    assert torch.allclose(same(x), net(x), atol=1e-5)
    big, small = export_onnx(net, (1, 1, 8, 8)), export_onnx(ticket, (1, 1, 8, 8))
    assert peak_activation_kb(small) < peak_activation_kb(big)
    res2 = train_candidate(ticket, splits, replace_epochs(genome.hparams, 2), patience=10)
    assert res2.val_accuracy > 0.5


def replace_epochs(hp, epochs):
    from dataclasses import replace

    return replace(hp, epochs=epochs)


def test_gamma_sparsity_adds_l1_subgradient():
    from search.training.earlybird import add_gamma_sparsity

    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -0.2, 1.0]))
    handles = add_gamma_sparsity(bn, 0.1)
    bn(torch.randn(4, 3, 2, 2)).sum().backward()  # d(sum)/d(gamma) is ~0 after normalisation
    assert torch.allclose(bn.weight.grad, torch.tensor([0.1, -0.1, 0.1]), atol=1e-5)
    for h in handles:
        h.remove()


def test_train_candidate_stops_when_a_callback_says_so():
    from search.spaces.base import TrainHParams
    from search.spaces.menndl import ConvGene, MenndlGenome, MenndlSpace
    from search.training.train import train_candidate

    class StopAt2:
        seen: list[int] = []

        def on_epoch_end(self, model, epoch):
            self.seen.append(epoch)
            return epoch == 2

    genome = MenndlGenome((ConvGene(8),), hparams=TrainHParams(epochs=5))
    splits = _tiny_digits()
    cb = StopAt2()
    res = train_candidate(MenndlSpace().build(genome, splits.task), splits, genome.hparams, callbacks=[cb],
                          patience=10)
    assert cb.seen == [1, 2] and res.epochs == 2 and res.stop_reason == "callback" and res.early_stopped
