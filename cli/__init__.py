"""What the command-line scripts (train.py, evaluate.py, analyze.py) share: a run's model and prompts (setup.py),
their main, one-line errors and help (script.py)."""
