"""Reading sweeps and reporting them: tolerant records, the paper's Table 1 and Fig. 3.

:mod:`.records` reads ``results.jsonl`` files; :mod:`.trials` selects each trial's test
accuracy with DomainBed's selection methods, :mod:`.protocol` states what a table compared,
:mod:`.summary` computes the cells' statistics (pure); :mod:`.format` renders
text/Markdown/LaTeX/CSV, :mod:`.figures` draws box plots. Importing this package imports
nothing.
"""
