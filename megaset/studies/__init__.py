"""Robustness studies that chain the stages on derived configurations, above every layer:
:mod:`.channel_removal` (the thesis' channel-removal test), :mod:`.contamination` (Farina et
al.'s signal contamination of the training data), :mod:`.pt_altering` (the thesis'
pT-altering test) and :mod:`.common` (what they share). Nothing is imported here, so that
``megaset --help`` stays fast."""
