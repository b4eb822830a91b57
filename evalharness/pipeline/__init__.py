"""The run pipeline: a spec (``spec``) becomes one run of models × tasks (``runner``: generate what is missing,
judge what is missing, aggregate, store), plus the ``eval`` and ``generate`` commands' entry points.

It imports tasks and the layers below; it never imports ``analysis`` (they meet only through the store).
"""
