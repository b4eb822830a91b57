"""Tasks: each module (or folder, for an official benchmark) is one evaluation with config, items, requests,
judge, aggregate and VERSION; ``base.task_class(name)`` finds it by name. Shared machinery: ``base``,
``prompted`` (prompt-file tasks), ``paired`` (paired statistics), ``benchdata`` (pinned official data).

Official benchmarks keep their parts together: ``alpaca_eval/``, ``arena_hard/``, ``mt_bench/`` each hold the
task, the official metric and its paired statistics.
"""
