"""What each notebook computes: one module per chapter of the book.

A notebook is narrative, its parameters, and one call per result: ``chapter.compute(study, **parameters)``
checks the parameters (before any compute), gets the runs from the cache and returns a result whose
``facts`` (a flat dict of numbers and :class:`~aalp.publish.Phrase`) the notebook publishes for the book
with :meth:`aalp.experiments.Study.publish`, and whose tables and figures (``chapter.plot_*``) it shows.
Verdicts, ties and every other rule live here, tested, never in a notebook.
"""
