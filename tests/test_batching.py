"""TensorFlow's next_batch order: epoch-wise permutations, batches straddling an epoch end."""

import torch

from mnistlab.data import Batcher


def test_batch_straddles_epoch_end():
    b = Batcher(5, 3, seed=7)
    g = torch.Generator().manual_seed(7)
    perm0 = torch.randperm(5, generator=g)
    perm1 = torch.randperm(5, generator=g)
    perm2 = torch.randperm(5, generator=g)
    assert b.next_indices().tolist() == perm0[:3].tolist()
    # the rest of epoch 0, then the head of a fresh permutation
    assert b.next_indices().tolist() == perm0[3:].tolist() + perm1[:1].tolist()
    assert b.epochs_completed == 1
    assert b.next_indices().tolist() == perm1[1:4].tolist()
    assert b.next_indices().tolist() == perm1[4:].tolist() + perm2[:2].tolist()


def test_each_epoch_covers_every_example_once():
    b = Batcher(100, 10, seed=1)
    seen = torch.cat([b.next_indices() for _ in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    second = torch.cat([b.next_indices() for _ in range(10)])
    assert sorted(second.tolist()) == list(range(100))
    assert seen.tolist() != second.tolist()


def test_same_seed_same_order_and_state_resume():
    a, b = Batcher(55, 10, seed=3), Batcher(55, 10, seed=3)
    for _ in range(7):
        assert torch.equal(a.next_indices(), b.next_indices())
    state = a.state_dict()
    expected = [a.next_indices() for _ in range(12)]
    c = Batcher(55, 10, seed=999)
    c.load_state_dict(state)
    assert all(torch.equal(x, c.next_indices()) for x in expected)


def test_batch_larger_than_dataset():
    b = Batcher(4, 10, seed=0)
    idx = b.next_indices()
    assert idx.numel() == 10
    assert b.epochs_completed == 2
