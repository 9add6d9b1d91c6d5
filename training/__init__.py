"""The training layer: autoencoders trained on the store's chunks, alone or with PyTorch DDP,
and the scores they give every event.

``megaset.training.trainer.train`` is the entry point. One job per module: ``models`` (the
networks), ``pca`` (the dask-ml baseline and its scree), ``registry`` (every model by name),
``scaling`` (inputs from the store's statistics), ``loader`` (the chunk-streaming
``IterableDataset``), ``loop`` (what every rank runs), ``ddp`` (ranks on Dask workers),
``__main__`` (ranks under torchrun), ``checkpoint`` (data-only checkpoints), ``score`` (the
reconstruction error of every event) and ``plots``. Nothing is imported here, so that
``megaset --help`` stays fast.
"""
