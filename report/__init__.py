"""Physics report from a scored store: :mod:`.samples` (the samples, with expected yields),
:mod:`.metrics` (ROC, AUC, E_x, significances), :mod:`.plots` (hist + mplhep figures),
:mod:`.report` (the report of every scored model, with :mod:`.markdown`), :mod:`.pt_altering`
(the thesis' pT-altering test) and :mod:`.studies` (channel removal, contamination)."""
