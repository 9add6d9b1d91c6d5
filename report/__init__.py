"""Physics report from a scored store: :mod:`.samples` (the samples, with expected yields),
:mod:`.metrics` (ROC, AUC, E_x, significances), :mod:`.plots` (hist + mplhep figures) and
:mod:`.report` (the report of every scored model, with :mod:`.markdown`). The studies that
chain stages (channel removal, contamination, pT altering) live in :mod:`megaset.studies`."""
