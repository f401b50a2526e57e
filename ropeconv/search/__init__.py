"""LongRoPE's evolutionary search (`ropeconv search longrope`).

evolution.py  the search itself: pure functions over numpy arrays, the paper's formulas at the top
seeds.py      the initial population's seeds, read off the PI / NTK / YaRN / dynamic-NTK plans
fitness.py    perplexity in transformers with a candidate plan installed (one model, plans swapped)
limits.py     the stated bounds of its sizes and of the --text it reads
run.py        the command's flow: checks, caches, the long and short searches, the published files
plot.py       the best-perplexity curve
"""
