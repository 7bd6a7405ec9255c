"""IndexBatchSampler: whole-batch index tensors, per-epoch shuffle, DDP sharding."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from keel.data.batches import IndexBatchSampler


def rows(sampler: IndexBatchSampler) -> list[int]:
    return [int(i) for batch in sampler for i in batch]


def test_single_process_in_order_batches():
    s = IndexBatchSampler(10, batch_size=3, shuffle=False, seed=0)
    batches = list(s)
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert all(b.dtype == torch.int64 for b in batches)
    assert len(s) == len(batches) == 4


@pytest.mark.parametrize("n,bs", [(10, 3), (12, 4), (1, 5), (7, 1)])
def test_single_process_shuffled_yields_every_index_once(n, bs):
    s = IndexBatchSampler(n, batch_size=bs, shuffle=True, seed=3)
    batches = list(s)
    assert len(s) == len(batches)
    assert all(len(b) == bs for b in batches[:-1]) and 1 <= len(batches[-1]) <= bs
    assert sorted(rows(s)) == list(range(n))


def test_shuffle_depends_on_seed_and_epoch():
    n = 64
    s = IndexBatchSampler(n, batch_size=8, shuffle=True, seed=11)
    epoch0 = rows(s)
    assert epoch0 != list(range(n))
    assert rows(s) == epoch0  # same epoch, same order
    s.set_epoch(1)
    epoch1 = rows(s)
    assert epoch1 != epoch0
    assert sorted(epoch1) == list(range(n))
    assert rows(s) == epoch1
    s.set_epoch(0)
    assert rows(s) == epoch0  # the order is a function of (seed, epoch), not of history
    other_seed = IndexBatchSampler(n, batch_size=8, shuffle=True, seed=12)
    assert rows(other_seed) != epoch0
    twin = IndexBatchSampler(n, batch_size=8, shuffle=True, seed=11)
    assert rows(twin) == epoch0  # fresh instance (e.g. another rank) agrees


def test_no_shuffle_ignores_epoch():
    s = IndexBatchSampler(9, batch_size=4, shuffle=False, seed=0)
    first = rows(s)
    s.set_epoch(5)
    assert rows(s) == first == list(range(9))


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_without_pad_partition_the_rows(shuffle):
    n = 11
    r0 = IndexBatchSampler(n, batch_size=4, shuffle=shuffle, seed=2, rank=0, world_size=2, pad=False)
    r1 = IndexBatchSampler(n, batch_size=4, shuffle=shuffle, seed=2, rank=1, world_size=2, pad=False)
    a, b = rows(r0), rows(r1)
    assert (len(a), len(b)) == (6, 5)
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(n))
    assert len(r0) == len(list(r0)) == 2
    assert len(r1) == len(list(r1)) == 2
    if not shuffle:
        assert a == [0, 2, 4, 6, 8, 10] and b == [1, 3, 5, 7, 9]


@pytest.mark.parametrize("n,world_size", [(11, 2), (10, 3), (13, 4), (12, 4)])
def test_pad_gives_every_rank_the_same_rows_and_batches(n, world_size):
    samplers = [
        IndexBatchSampler(n, batch_size=2, shuffle=True, seed=4, rank=r, world_size=world_size, pad=True)
        for r in range(world_size)
    ]
    per_rank = [rows(s) for s in samplers]
    expected_rows = -(-n // world_size)  # ceil
    assert [len(r) for r in per_rank] == [expected_rows] * world_size
    n_batches = [len(list(s)) for s in samplers]
    assert n_batches == [len(s) for s in samplers] == [-(-expected_rows // 2)] * world_size
    everything = [i for r in per_rank for i in r]
    assert set(everything) == set(range(n))  # nothing lost
    counts = Counter(everything)
    assert sum(c - 1 for c in counts.values()) == expected_rows * world_size - n  # only the padding repeats
    assert max(counts.values()) <= 2


def test_pad_on_a_single_process_changes_nothing():
    s = IndexBatchSampler(7, batch_size=3, shuffle=False, seed=0, pad=True)
    assert rows(s) == list(range(7))
    assert len(s) == 3


def test_pad_with_fewer_rows_than_ranks_still_equalizes():
    per_rank = [list(IndexBatchSampler(1, batch_size=1, shuffle=False, seed=0, rank=r, world_size=3, pad=True))
                for r in range(3)]
    assert [len(b) for b in per_rank] == [1, 1, 1]


def test_drop_last_drops_the_partial_batch():
    s = IndexBatchSampler(10, batch_size=3, shuffle=False, seed=0, drop_last=True)
    batches = [b.tolist() for b in s]
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert len(s) == 3
    shuffled = IndexBatchSampler(10, batch_size=3, shuffle=True, seed=0, drop_last=True)
    assert [len(b) for b in shuffled] == [3, 3, 3]
    assert len(set(rows(shuffled))) == 9
    # fewer rows than one batch: nothing at all
    tiny = IndexBatchSampler(2, batch_size=3, shuffle=False, seed=0, drop_last=True)
    assert len(tiny) == 0 and list(tiny) == []


def test_drop_last_with_ranks():
    for rank, expected in ((0, [[0, 2, 4, 6]]), (1, [[1, 3, 5, 7]])):
        s = IndexBatchSampler(11, batch_size=4, shuffle=False, seed=0, rank=rank, world_size=2, drop_last=True)
        assert [b.tolist() for b in s] == expected
        assert len(s) == 1


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"batch_size": 0}, r"batch_size=0: expected >= 1"),
        ({"batch_size": -2}, r"batch_size=-2: expected >= 1"),
        ({"rank": 2, "world_size": 2}, r"rank=2 is outside world_size=2"),
        ({"rank": -1, "world_size": 2}, r"rank=-1 is outside world_size=2"),
        ({"rank": 0, "world_size": 0}, r"rank=0 is outside world_size=0"),
    ],
)
def test_invalid_arguments_raise(kwargs, pattern):
    args = {"n": 10, "batch_size": 2, "shuffle": False, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        IndexBatchSampler(**args)


def _data():
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(23, 4, generator=g), torch.randint(0, 3, (23,), generator=g))


def _loader(**kwargs):
    from keel.data.batches import ResumableLoader

    return ResumableLoader(_data(), sampler=IndexBatchSampler(23, 5, shuffle=True, seed=1, pad=True), batch_size=None,
                           **kwargs)


def test_loader_batches_are_one_gather_of_each_sampled_index_batch():
    """Through a plain DataLoader (sampler + ``batch_size=None``), each batch is the rows of one
    index batch of the sampler, in the sampler's order, from every tensor of the dataset."""
    loader = _loader()
    x, y = loader.dataset.tensors
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        indices = list(loader.sampler)
        got = list(loader)
        assert len(loader) == len(got) == len(indices) == 5 and loader.served == 5
        for index, batch in zip(indices, got, strict=True):
            assert len(batch) == 2 and torch.equal(batch[0], x[index]) and torch.equal(batch[1], y[index])
            assert batch[0].shape == (len(index), 4) and batch[1].dtype == torch.int64


def test_same_seed_same_batches_and_random_stream():
    """Two loaders with the same sampler seed hand out the same batches in the same order, and
    an epoch leaves the global random stream where a plain DataLoader epoch leaves it."""
    from torch.utils.data import DataLoader

    a, b = _loader(), _loader()
    plain = DataLoader(_data(), sampler=IndexBatchSampler(23, 5, shuffle=True, seed=1, pad=True), batch_size=None)
    for epoch in range(2):
        for loader in (a, b, plain):
            loader.sampler.set_epoch(epoch)
        torch.manual_seed(7)
        want = list(plain)
        state = torch.get_rng_state()
        for loader in (a, b):
            torch.manual_seed(7)
            got = list(loader)
            assert torch.equal(torch.get_rng_state(), state)
            assert len(got) == len(want) == 5
            for u, v in zip(want, got, strict=True):
                assert torch.equal(u[0], v[0]) and torch.equal(u[1], v[1])
    other = _loader()
    other.sampler.seed = 2
    assert not all(torch.equal(u[1], v[1]) for u, v in zip(list(_loader()), list(other)))


def test_resume_inside_an_epoch_skips_the_batches_done():
    loader = _loader()
    loader.sampler.set_epoch(3)
    whole = list(loader)
    assert loader.state_dict() == {"epoch": 3, "batches_done": 5}
    loader.load_state_dict({"epoch": 3, "batches_done": 2})
    rest = list(loader)
    # served counts the epoch's position, the skipped batches too: a second interruption now
    # records batches_done=5, not the 3 this iterator handed out
    assert loader.served == 5 and len(rest) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[2:], rest, strict=True))
    assert len(list(loader)) == 5  # the skip happens once: the epoch read again is whole


def test_resume_counts_batches_with_workers_and_a_custom_collate():
    workers = _loader(num_workers=1)
    workers.sampler.set_epoch(1)
    whole = list(workers)
    assert workers.served == 5
    workers.load_state_dict({"epoch": 1, "batches_done": 4})
    rest = list(workers)
    assert workers.served == 5 and len(rest) == 1 and torch.equal(rest[0][0], whole[4][0])
    custom = _loader(collate_fn=lambda batch: batch)
    it = iter(custom)
    assert len(it) == 5 and len(list(it)) == 5 and custom.served == 5


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_shards_through_the_loader_are_padded_to_equal_length(world_size):
    """Each rank's training loader covers its padded shard: the same number of batches and rows
    on every rank, every row of the split on some rank, only the padding repeated."""
    from keel.data.batches import ResumableLoader

    data = _data()
    loaders = [ResumableLoader(data, sampler=IndexBatchSampler(23, 4, shuffle=True, seed=5, rank=r,
                                                               world_size=world_size, pad=True), batch_size=None)
               for r in range(world_size)]
    per_rank = [list(loader) for loader in loaders]
    rows_per_rank = -(-23 // world_size)
    assert [len(b) for b in per_rank] == [len(loader) for loader in loaders] == [-(-rows_per_rank // 4)] * world_size
    features = [torch.cat([b[0] for b in batches]) for batches in per_rank]
    assert [len(x) for x in features] == [rows_per_rank] * world_size
    seen = Counter(tuple(row.tolist()) for x in features for row in x)
    assert set(seen) == {tuple(row.tolist()) for row in data.tensors[0]}
    assert sum(c - 1 for c in seen.values()) == rows_per_rank * world_size - 23


def test_evaluation_loader_is_in_order():
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(11.0).unsqueeze(1), torch.arange(11))
    loader = DataLoader(data, sampler=IndexBatchSampler(11, 4, shuffle=False, seed=0), batch_size=None)
    got = list(loader)
    assert len(loader) == 3
    assert [b[1].tolist() for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert [b[0].squeeze(1).tolist() for b in got] == [[0.0, 1, 2, 3], [4.0, 5, 6, 7], [8.0, 9, 10]]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_in_memory_loader_resumed_mid_epoch_serves_what_follows_with_workers_too(workers):
    """Lightning's order on a mid-epoch resume: the iterator (workers are handed indices at
    once), then the loader's state, then set_epoch, then the batches; and a second interruption
    resumes at the right batch."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from keel.config import register_resolvers

    register_resolvers()
    conf = Path(__file__).resolve().parents[2] / "conf" / "data" / "digits.yaml"

    def dm(num_workers):
        cfg = OmegaConf.load(conf)
        cfg.seed, cfg.task, cfg.num_workers = 3, "auto", num_workers
        d = instantiate(cfg)
        d.setup()
        return d

    ref = dm(0)
    loader = ref.train_dataloader()
    loader.sampler.set_epoch(4)
    whole = [x for x, _ in loader]
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 4, "batches_done": 2}
    resumed = dm(workers).train_dataloader()
    it = iter(resumed)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(4)
    first = next(it)[0]
    assert resumed.state_dict() == {"epoch": 4, "batches_done": 3}
    rest = [first, *(x for x, _ in it)]
    assert len(rest) == len(whole) - 2 and all(torch.equal(a, b) for a, b in zip(rest, whole[2:]))
    resumed.sampler.set_epoch(5)
    assert len(list(resumed)) == len(whole)  # the next epoch is whole
