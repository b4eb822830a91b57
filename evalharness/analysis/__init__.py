"""Analysis of finished runs, read from the store: ``compare`` (the table, paired cells, the regression gate,
history), ``plot`` (frontier and temperature figures), ``html_report``, ``text`` (the terminal table) and
``interop`` (official files in and out).

It imports tasks (for their paired statistics) and the layers below; it never imports ``pipeline``.
"""
