"""judging/distinct.py: distinct-n counted by hand."""

import math

from judging.distinct import distinct_n


def test_distinct_2_by_hand():
    # bigrams (the, cat) (cat, the) (the, cat) (cat, the) (the, cat): 2 distinct of 5
    assert distinct_n("the cat the cat the cat") == 2 / 5
    # (a, good) (good, film) (film, a) (a, good) (good, film): 3 distinct of 5; case and spacing do not count
    assert distinct_n("A good  film a GOOD\nfilm") == 3 / 5
    assert distinct_n("every word here differs from the others") == 1.0
    assert distinct_n("the the the the", n=1) == 1 / 4


def test_no_bigram_is_nan_not_repetition():
    assert math.isnan(distinct_n("alone")) and math.isnan(distinct_n(""))
