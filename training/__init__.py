"""training layer: autoencoders trained on the store's chunks, alone or with PyTorch DDP.

``megaset.training.trainer.train`` is the entry point. One job per module: ``models`` (the
zoo and its registry), ``pca`` (the dask-ml baseline and its scree), ``scaling`` (inputs from
the store's statistics), ``loader`` (the chunk-streaming ``IterableDataset``), ``loop`` (what
every rank runs), ``ddp`` (ranks on Dask workers or under torchrun), ``checkpoint`` (data-only
checkpoints) and ``plots``. Nothing is imported here, so that ``megaset --help`` stays fast.
"""
