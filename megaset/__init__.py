"""megaset: model-independent new-physics searches, from ROOT ntuples to anomaly scores.

The layers live in their own packages, each importing only those below it: ``megaset.deploy``
(clusters), ``megaset.storage`` (staging area and store), ``megaset.pipeline`` (ingest),
``megaset.training`` (models, DDP, scoring) and ``megaset.report``; ``megaset.config`` and
``megaset.errors`` sit under all of them. Above them all, ``megaset.cli`` (the command line),
``megaset.run`` (the whole chain) and ``megaset.studies`` orchestrate the stages.
"""

__version__ = "0.1.0"
