"""The judges of generated text, none of them trained here: VADER's sentiment analyser read from its own source
archive (vader.py), distinct-n (distinct.py), and a frozen model's perplexity of a continuation (perplexity.py)."""
