"""The evaluation harness: match quality on real labelled benchmarks, baselines in the same run.

``python -m evaluation`` (``make evaluate``) runs it; see ``evaluation.tasks`` for the tasks and
``bench/README.md`` for the results and which files each number used.
"""
