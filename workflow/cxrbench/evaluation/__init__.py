"""Evaluation and statistics: per-run metrics, the paired bootstrap, tests between initialisations,
tables, figures and the description of every evaluation output.

Pure array/DataFrame functions live in ``metrics``, ``bootstrap``, ``comparisons``, ``tables`` and
``figures``; file reading and writing happens only in ``predictions`` (input contract), ``outputs``
(file names and the results README) and the two CLI modules.
"""
