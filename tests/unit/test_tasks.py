"""Tests for dkd_core.tasks: task tables, step label/channel maps, label LUTs (docs/method.md §1, §2)."""

from __future__ import annotations

import numpy as np
import pytest

from dkd_core.errors import DKDError
from dkd_core.tasks import (
    DATASET_NUM_CLASSES,
    SETTINGS,
    Task,
    TaskStep,
    get_task,
    list_tasks,
)

SHUFFLED_KEYS = "bcdefghijklmnopqrstuvw"

# Independently written expectations: (dataset, name) -> classes per step.
EXPECTED_CLASSES_PER_STEP = {
    ("voc", "19-1"): (19, 1),
    ("voc", "15-5"): (15, 5),
    ("voc", "15-1"): (15, 1, 1, 1, 1, 1),
    ("voc", "10-1"): (10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
    ("voc", "5-3"): (5, 3, 3, 3, 3, 3),
    ("voc", "10-5"): (10, 5, 5),
    ("voc", "10-10"): (10, 10),
    ("voc", "joint"): (20,),
    ("ade", "100-50"): (100, 50),
    ("ade", "100-10"): (100, 10, 10, 10, 10, 10),
    ("ade", "100-5"): (100, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5),
    ("ade", "50-50"): (50, 50, 50),
    ("ade", "joint"): (150,),
} | {("voc", f"15-1_{key}"): (15, 1, 1, 1, 1, 1) for key in SHUFFLED_KEYS}


def test_constants() -> None:
    assert DATASET_NUM_CLASSES == {"voc": 20, "ade": 150}
    assert SETTINGS == ("overlap", "disjoint")


def test_list_tasks_names_every_named_task() -> None:
    for dataset in ("voc", "ade"):
        expected = {name for ds, name in EXPECTED_CLASSES_PER_STEP if ds == dataset}
        assert set(list_tasks(dataset)) == expected
    assert len(list_tasks("voc")) == 8 + 22


@pytest.mark.parametrize(("dataset", "name"), sorted(EXPECTED_CLASSES_PER_STEP))
def test_named_task_table(dataset: str, name: str) -> None:
    task = get_task(dataset, name)
    k = DATASET_NUM_CLASSES[dataset]
    expected = EXPECTED_CLASSES_PER_STEP[(dataset, name)]
    assert (task.dataset, task.name, task.setting, task.num_classes) == (
        dataset,
        name,
        "overlap",
        k,
    )
    assert task.classes_per_step == expected
    assert task.num_steps == len(expected)
    assert tuple(len(step) for step in task.steps) == expected
    # Each label 1..K is learned exactly once.
    assert sorted(task.label_order) == list(range(1, k + 1))
    assert task.label_order == tuple(label for step in task.steps for label in step)


@pytest.mark.parametrize(
    ("dataset", "name", "steps"),
    [
        ("voc", "19-1", (tuple(range(1, 20)), (20,))),
        ("voc", "15-5", (tuple(range(1, 16)), (16, 17, 18, 19, 20))),
        ("voc", "15-1", (tuple(range(1, 16)), (16,), (17,), (18,), (19,), (20,))),
        ("voc", "10-1", (tuple(range(1, 11)), *((label,) for label in range(11, 21)))),
        (
            "voc",
            "5-3",
            ((1, 2, 3, 4, 5), (6, 7, 8), (9, 10, 11), (12, 13, 14), (15, 16, 17), (18, 19, 20)),
        ),
        ("voc", "10-5", (tuple(range(1, 11)), (11, 12, 13, 14, 15), (16, 17, 18, 19, 20))),
        ("voc", "10-10", (tuple(range(1, 11)), tuple(range(11, 21)))),
        ("voc", "joint", (tuple(range(1, 21)),)),
        ("ade", "100-50", (tuple(range(1, 101)), tuple(range(101, 151)))),
        ("ade", "50-50", (tuple(range(1, 51)), tuple(range(51, 101)), tuple(range(101, 151)))),
        ("ade", "joint", (tuple(range(1, 151)),)),
        (
            "voc",
            "15-1_b",
            (
                (12, 9, 20, 7, 15, 8, 14, 16, 5, 19, 4, 1, 13, 2, 11),
                (17,),
                (3,),
                (6,),
                (18,),
                (10,),
            ),
        ),
        (
            "voc",
            "15-1_w",
            (
                (1, 2, 12, 14, 13, 19, 18, 7, 11, 20, 8, 4, 9, 16, 10),
                (3,),
                (15,),
                (6,),
                (5,),
                (17,),
            ),
        ),
    ],
)
def test_named_task_labels(dataset: str, name: str, steps: tuple[tuple[int, ...], ...]) -> None:
    assert get_task(dataset, name).steps == steps


def test_ade_100_10_and_100_5_later_steps() -> None:
    assert get_task("ade", "100-10").steps[3] == tuple(range(121, 131))
    assert get_task("ade", "100-5").steps[10] == (146, 147, 148, 149, 150)


def test_setting_is_carried_to_steps() -> None:
    task = get_task("voc", "15-5", setting="disjoint")
    assert task.setting == "disjoint"
    assert task.step(1).setting == "disjoint"


def test_step_voc_15_5_step_1() -> None:
    step = get_task("voc", "15-5").step(1)
    assert isinstance(step, TaskStep)
    assert (step.dataset, step.task_name, step.index) == ("voc", "15-5", 1)
    assert step.new_labels == (16, 17, 18, 19, 20)
    assert step.old_labels == tuple(range(1, 16))
    assert (step.num_old, step.num_new, step.num_seen) == (15, 5, 20)
    assert step.classes_per_step == (15, 5)
    assert step.old_channels == tuple(range(1, 16))
    assert step.new_channels == (16, 17, 18, 19, 20)
    assert step.seen_labels == tuple(range(1, 21))
    assert step.channel_to_label == tuple(range(21))


def test_step_voc_15_1_step_3() -> None:
    step = get_task("voc", "15-1").step(3)
    assert step.new_labels == (18,)
    assert step.old_labels == (*range(1, 16), 16, 17)
    assert (step.num_old, step.num_new, step.num_seen) == (17, 1, 18)
    assert step.classes_per_step == (15, 1, 1, 1)
    assert step.old_channels == tuple(range(1, 18))
    assert step.new_channels == (18,)
    assert step.label_to_channel == {label: label for label in range(19)}


def test_step_0_has_no_old_classes() -> None:
    step = get_task("voc", "10-10").step(0)
    assert step.old_labels == ()
    assert (step.num_old, step.num_new, step.num_seen) == (0, 10, 10)
    assert step.old_channels == ()
    assert step.new_channels == tuple(range(1, 11))


def test_iterating_a_task_yields_its_steps() -> None:
    task = get_task("voc", "10-5")
    steps = list(task)
    assert [s.index for s in steps] == [0, 1, 2]
    assert [s.new_labels for s in steps] == list(task.steps)


def test_shuffled_15_1_b_step_2_channels() -> None:
    step = get_task("voc", "15-1_b").step(2)
    expected = (0, 12, 9, 20, 7, 15, 8, 14, 16, 5, 19, 4, 1, 13, 2, 11, 17, 3)
    assert step.channel_to_label == expected
    assert step.new_labels == (3,)
    assert step.new_channels == (17,)
    assert step.old_channels == tuple(range(1, 17))
    to_channel = step.label_to_channel
    assert to_channel[0] == 0
    assert to_channel[12] == 1
    assert to_channel[20] == 3
    assert to_channel[1] == 12
    assert to_channel[17] == 16
    assert to_channel[3] == 17
    assert 6 not in to_channel  # a future class has no channel yet
    assert len(to_channel) == 18


def test_shuffled_15_1_w_step_5_channels() -> None:
    step = get_task("voc", "15-1_w").step(5)
    expected = (0, 1, 2, 12, 14, 13, 19, 18, 7, 11, 20, 8, 4, 9, 16, 10, 3, 15, 6, 5, 17)
    assert step.channel_to_label == expected
    assert step.new_labels == (17,)
    assert step.label_to_channel[17] == 20
    assert step.label_to_channel[5] == 19
    assert step.label_to_channel[10] == 15
    assert step.label_to_channel[3] == 16


@pytest.mark.parametrize(("name", "t"), [("15-1_b", 2), ("15-1_w", 5), ("15-1_m", 1), ("15-1", 4)])
def test_channel_label_round_trip(name: str, t: int) -> None:
    step = get_task("voc", name).step(t)
    to_channel = step.label_to_channel
    assert len(to_channel) == len(step.channel_to_label) == 1 + step.num_seen
    for channel, label in enumerate(step.channel_to_label):
        assert to_channel[label] == channel


def test_label_lut_ascending_15_1_step_1() -> None:
    step = get_task("voc", "15-1").step(1)  # old 1..15, new 16, future 17..20
    image = np.array([[0, 255, 3, 16], [17, 15, 20, 16]], dtype=np.uint8)

    train = step.label_lut(step.new_labels, fill=0)
    assert train.dtype == np.uint8 and train.shape == (256,)
    np.testing.assert_array_equal(train[image], [[0, 255, 0, 16], [0, 0, 0, 16]])

    test_voc = step.label_lut(step.seen_labels, fill=0)
    np.testing.assert_array_equal(test_voc[image], [[0, 255, 3, 16], [0, 15, 0, 16]])

    test_ade = step.label_lut(step.seen_labels, fill=255)
    np.testing.assert_array_equal(test_ade[image], [[0, 255, 3, 16], [255, 15, 255, 16]])


def test_label_lut_shuffled_15_1_b_step_2() -> None:
    step = get_task("voc", "15-1_b").step(2)  # new 3 (ch 17), old incl. 17 (ch 16); future 6, 10
    image = np.array([[0, 255, 3, 17], [12, 1, 6, 10]], dtype=np.uint8)

    train = step.label_lut(step.new_labels, fill=0)
    np.testing.assert_array_equal(train[image], [[0, 255, 17, 0], [0, 0, 0, 0]])

    test_voc = step.label_lut(step.seen_labels, fill=0)
    np.testing.assert_array_equal(test_voc[image], [[0, 255, 17, 16], [1, 12, 0, 0]])

    test_ade = step.label_lut(step.seen_labels, fill=255)
    np.testing.assert_array_equal(test_ade[image], [[0, 255, 17, 16], [1, 12, 255, 255]])


def test_label_lut_values_outside_dataset_go_to_fill() -> None:
    step = get_task("voc", "19-1").step(1)
    lut = step.label_lut(step.seen_labels, fill=255)
    assert lut[0] == 0 and lut[255] == 255
    assert (lut[21:255] == 255).all()
    np.testing.assert_array_equal(lut[1:21], np.arange(1, 21))


@pytest.mark.parametrize("label", [0, 18, 255, 999])
def test_label_lut_rejects_unseen_keep_label(label: int) -> None:
    step = get_task("voc", "15-1").step(2)
    with pytest.raises(DKDError, match=rf"keep label {label} .*seen labels"):
        step.label_lut((16, label), fill=0)


@pytest.mark.parametrize("fill", [-1, 256, 1.5])
def test_label_lut_rejects_bad_fill(fill: object) -> None:
    step = get_task("voc", "15-1").step(0)
    with pytest.raises(DKDError, match="fill"):
        step.label_lut(step.new_labels, fill=fill)  # type: ignore[arg-type]


def test_generic_task() -> None:
    task = get_task("toy", "4-1", num_classes=6)
    assert task.steps == ((1, 2, 3, 4), (5,), (6,))
    assert task.num_classes == 6
    assert task.classes_per_step == (4, 1, 1)
    assert task.step(2).old_labels == (1, 2, 3, 4, 5)
    assert get_task("toy", "2-2", num_classes=6).steps == ((1, 2), (3, 4), (5, 6))


def test_generic_joint() -> None:
    task = get_task("toy", "joint", num_classes=3)
    assert task.steps == ((1, 2, 3),)
    assert task.num_steps == 1


def test_generic_rule_matches_named_ascending_tasks() -> None:
    for dataset in ("voc", "ade"):
        k = DATASET_NUM_CLASSES[dataset]
        for name in list_tasks(dataset):
            if "_" not in name:
                assert (
                    get_task("custom", name, num_classes=k).steps == get_task(dataset, name).steps
                )


def test_generic_missing_num_classes() -> None:
    with pytest.raises(DKDError, match="num_classes"):
        get_task("toy", "4-1")


@pytest.mark.parametrize(
    ("name", "k"), [("4-3", 6), ("6-1", 6), ("7-1", 6), ("15-1_b", 20), ("4", 6), ("0-2", 6)]
)
def test_generic_bad_name(name: str, k: int) -> None:
    with pytest.raises(DKDError, match=f"'{name}'"):
        get_task("toy", name, num_classes=k)


def test_generic_non_divisible_message() -> None:
    with pytest.raises(DKDError, match=r"B < K and K - B divisible by I"):
        get_task("toy", "4-3", num_classes=6)


@pytest.mark.parametrize("k", [0, 255, True])
def test_generic_bad_num_classes(k: int) -> None:
    with pytest.raises(DKDError, match="num_classes"):
        get_task("toy", "joint", num_classes=k)


def test_builtin_num_classes_must_match() -> None:
    assert get_task("voc", "15-5", num_classes=20).num_classes == 20
    with pytest.raises(DKDError, match=r"'voc' has 20 classes.*21"):
        get_task("voc", "15-5", num_classes=21)


def test_unknown_dataset() -> None:
    with pytest.raises(DKDError, match=r"'cityscapes' is not built-in \(voc, ade\)"):
        get_task("cityscapes", "15-1")
    with pytest.raises(DKDError, match="lower-case"):
        get_task("VOC", "15-1")
    with pytest.raises(DKDError, match=r"'toy'.*voc, ade"):
        list_tasks("toy")


def test_unknown_task_name_lists_valid_names() -> None:
    with pytest.raises(DKDError, match=r"unknown task '15-2'.*valid tasks: ") as info:
        get_task("voc", "15-2")
    for name in ("19-1", "15-1", "joint", "15-1_w"):
        assert name in str(info.value)
    with pytest.raises(DKDError, match=r"100-50"):
        get_task("ade", "15-1")
    with pytest.raises(DKDError, match=r"unknown task '15-1_B'"):
        get_task("voc", "15-1_B")  # names are case-sensitive


@pytest.mark.parametrize("t", [-1, 6, 1.0, True])
def test_unknown_step(t: object) -> None:
    task = get_task("voc", "15-1")
    with pytest.raises(DKDError, match=r"valid steps: 0\.\.5"):
        task.step(t)  # type: ignore[arg-type]


def test_bad_setting() -> None:
    with pytest.raises(DKDError, match=r"'overlapped'.*overlap, disjoint"):
        get_task("voc", "15-1", setting="overlapped")


def test_task_rejects_steps_that_do_not_partition() -> None:
    with pytest.raises(DKDError, match="partition"):
        Task("toy", "bad", "overlap", 4, ((1, 2), (2, 3, 4)))
    with pytest.raises(DKDError, match="partition"):
        Task("toy", "bad", "overlap", 4, ((1, 2, 3), ()))
    with pytest.raises(DKDError, match="setting"):
        Task("toy", "joint", "both", 2, ((1, 2),))
