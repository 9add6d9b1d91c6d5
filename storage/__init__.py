"""The storage layer: the only code that knows the layout of the staging area and the store.

One job per module: ``staging`` (the per-channel pieces ingest writes), ``plan`` and
``quotas`` (which staged rows go to which store chunk), ``mix`` and ``mix_chunk`` (the mix
pass and its per-chunk task), ``tasks`` (one Dask task per store chunk), ``store`` (the
reader and writer API of a finished store), ``layout`` (the RMM feature layout), ``scores``
(how score columns are named), ``stats`` (scaler statistics), ``verify`` (the invariants
re-checked), ``query`` (SQL over a group), ``codecs`` and ``backend`` (Zarr helpers).
Nothing is imported here, so that ``megaset --help`` stays fast.
"""
