"""Workflows that chain the pipeline and analysis: ``sweep`` (train a grid, evaluate, compare, plot),
``quickstart`` (the main job) and ``onpolicy`` (sample k answers, judge them, keep best vs worst).
"""
