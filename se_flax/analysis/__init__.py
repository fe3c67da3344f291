"""Analyses of trained networks: the paper's excitation study (§7.2).

`excitation_statistics` streams the SE gates of a model over a dataset
into per-class, per-channel `GateStatistics`; `class_specificity` and
`plots` turn them into the paper's table and figures (Figs. 6-7).
"""

from se_flax.analysis.gates import NoSEBlocksError
from se_flax.analysis.gates import SELayer
from se_flax.analysis.gates import excitation_statistics
from se_flax.analysis.gates import figure_layers
from se_flax.analysis.gates import se_layers
from se_flax.analysis.statistics import GateStatistics
from se_flax.analysis.statistics import LayerStatistics
from se_flax.analysis.statistics import class_specificity
