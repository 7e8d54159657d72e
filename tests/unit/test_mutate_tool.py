"""tools/mutate.py, the mutation sweep behind `make mutate`: which mutants it makes and
which of them a run picks (the sweep itself is too slow for the default suite)."""

import argparse

import pytest

from tools import mutate

SOURCE = '''
def rule(x, y):
    """A docstring is not mutated."""
    if x > 0.5 and y:
        return x + 1
    raise ValueError("bad", x + 2)
'''


def test_mutants_cover_comparisons_operators_constants_and_bool_ops():
    _, mutants, _ = mutate.find_mutants(SOURCE)
    descriptions = [m.description for m in mutants]
    assert "> -> >=" in descriptions
    assert "and -> or" in descriptions
    assert "+ -> -" in descriptions
    assert any(d.startswith("0.5 ->") for d in descriptions)
    assert all(m.function == "rule" for m in mutants)
    # a raised exception is left alone, though its `x + 2` could be mutated
    raise_line = SOURCE.splitlines().index('    raise ValueError("bad", x + 2)') + 1
    assert {m.line for m in mutants} == {raise_line - 2, raise_line - 1}


def test_each_mutant_changes_only_its_own_node():
    _, mutants, _ = mutate.find_mutants(SOURCE)
    flipped = mutate.mutated_source(SOURCE, [m.description for m in mutants].index("> -> >="))
    assert "x >= 0.5 and y" in flipped and "x + 1" in flipped
    assert mutate.mutated_source(SOURCE, 0) != SOURCE


@pytest.mark.parametrize(
    ("text", "numbers"),
    [("66-70,74", {66, 67, 68, 69, 70, 74}), ("3", {3}), (" 1-2 , 2-3 ", {1, 2, 3})],
)
def test_only_takes_numbers_and_ranges(text, numbers):
    assert mutate._numbers(text) == numbers


@pytest.mark.parametrize("text", ["5-3", "0", "a-b", "", "1,"])
def test_only_refuses_what_is_not_a_range(text):
    with pytest.raises(argparse.ArgumentTypeError):
        mutate._numbers(text)


def test_list_with_only_and_start_shows_just_those_mutants(capsys):
    module = "dkd_core/losses.py"
    assert mutate.main(["--module", module, "--list"]) == 0
    every = capsys.readouterr().out.splitlines()
    assert mutate.main(["--module", module, "--list", "--only", "2,4-5"]) == 0
    assert capsys.readouterr().out.splitlines() == [every[1], every[3], every[4]]
    assert mutate.main(["--module", module, "--list", "--only", "2,4-5", "--start", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == [every[3], every[4]]


def test_every_listed_equivalent_is_a_mutant_of_the_code_as_it_is():
    """An entry left behind by a code change would excuse nothing, or the wrong line."""
    keys = set()
    for module in mutate.MODULE_TESTS:
        _, mutants, _ = mutate.find_mutants((mutate.REPO / module).read_text())
        keys |= {f"{module} | {m.key}" for m in mutants}
    assert sorted(set(mutate.load_equivalents()) - keys) == []
