import itertools
import random

import pytest

from mailbag.harness.stats import inversions, key_violations, percentile, summary


def test_percentile_interpolates_and_handles_no_values():
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 99) == 99
    assert summary([1.0, 3.0])["max"] == 3.0


@pytest.mark.parametrize("seed", range(5))
def test_inversions_match_counting_every_pair(seed):
    values = random.Random(seed).sample(range(200), 60)
    brute = sum(1 for a, b in itertools.combinations(values, 2) if a > b)
    assert inversions(values) == brute


def test_key_violations_count_messages_handled_after_a_later_one_of_their_key():
    in_order = [("a", 0), ("b", 1), ("a", 2), ("b", 3)]
    assert key_violations(in_order) == 0
    # b:1 overtaken by b:3, a:0 overtaken by a:2; keys interleaving is not a violation
    assert key_violations([("b", 3), ("a", 2), ("a", 0), ("b", 1)]) == 2
