"""The ingest layer: ROOT ntuples in, per-channel staging arrays out.

One job per module: ``inputs`` (channels, files, checks and checksums), ``schema`` (branches
mapped onto object collections), ``objects`` (jagged objects), ``selection`` (object and event
selection, with its compiled kernels in ``_select_kernels``), ``rmm`` (the Rapidity-Mass
Matrix builder), ``processor`` (the coffea processor run per input chunk), ``ingest`` (the
stage, on Dask) and ``simulate`` (the demo's physically plausible ntuples, with ``_processes``
and ``_kinematics``). Nothing is imported here, so that ``megaset --help`` stays fast.
"""
