"""
distinct-n (Li et al., 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"): of a
text's n-grams of words, the share that are distinct. A text that repeats itself scores low: "the cat the cat the
cat" has the bigrams (the, cat), (cat, the), (the, cat), (cat, the), (the, cat), 2 distinct of 5: 0.4.

Words are the text's whitespace-separated pieces, lower-cased; a text with no n-gram scores nan (it is left out of
a mean, not counted as repetitive).
"""

import math


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct n-grams / n-grams of the text's words (lower-cased, split at whitespace); nan with none."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan
