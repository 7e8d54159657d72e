"""The split of the global batch over processes and micro-batches, and which images it holds."""

import pytest

from dkd_core.batching import BatchPlan, grouped, plan_batches
from dkd_core.data import ResumableSampler
from dkd_core.errors import DKDError


def test_no_micro_batch_size_means_no_accumulation():
    assert plan_batches(32, 4, None) == BatchPlan(32, 8, 8, 1)
    assert plan_batches(32, 4, 0) == BatchPlan(32, 8, 8, 1)


def test_micro_batches_accumulate_to_the_global_batch():
    assert plan_batches(32, 1, 8) == BatchPlan(32, 32, 8, 4)
    assert plan_batches(32, 4, 2) == BatchPlan(32, 8, 2, 4)
    assert plan_batches(24, 2, 12) == BatchPlan(24, 12, 12, 1)


def test_an_uneven_split_is_one_line_naming_the_keys_and_values():
    with pytest.raises(DKDError) as error:
        plan_batches(32, 2, 5)
    assert str(error.value) == (
        "data.batch_size 32 is not a multiple of processes (2) x data.micro_batch_size (5); "
        "choose a data.micro_batch_size that divides 16 (the images per process), "
        "or 0 for no accumulation"
    )
    with pytest.raises(
        DKDError, match=r"^data\.batch_size 32 is not divisible by the 3 processes$"
    ):
        plan_batches(32, 3, None)
    with pytest.raises(DKDError, match=r"data\.micro_batch_size \(32\)"):
        plan_batches(32, 2, 32)  # more than a process's share


def test_grouped_yields_whole_groups_in_order():
    assert list(grouped(range(7), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(grouped(range(4), 1)) == [[0], [1], [2], [3]]


@pytest.mark.parametrize("epoch,start", [(0, 0), (3, 2)])
def test_each_steps_images_are_the_same_whatever_the_split(epoch, start):
    """Global batch 8 as 1 process x 8, 2 x 4 and 4 x 2 images: step b holds the same images."""
    size, global_batch, seed = 50, 8, 5

    def steps(world_size: int) -> list[set[int]]:
        per_process = global_batch // world_size
        shares = []
        for rank in range(world_size):
            sampler = ResumableSampler(size, per_process, rank, world_size, seed)
            sampler.set_epoch(epoch, start)
            indices = list(sampler)
            assert len(indices) == len(sampler)
            shares.append(
                [indices[i : i + per_process] for i in range(0, len(indices), per_process)]
            )
        return [set().union(*(share[b] for share in shares)) for b in range(len(shares[0]))]

    one = steps(1)
    assert len(one) == size // global_batch - start and all(len(s) == global_batch for s in one)
    assert steps(2) == one and steps(4) == one
