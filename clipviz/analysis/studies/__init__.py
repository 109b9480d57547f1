"""Analyses of "What do Vision Transformers Learn?" (arXiv:2212.06727) as reproducible studies.

Each study is a function ``study(model, probe, ...) -> result`` whose result dataclass holds the figures per block
(``to_dict()``), a plot (``figure()``) and ``save(out)`` writing ``out/<name>.json`` and ``out/<name>.png``.

>>> import clipviz
>>> from clipviz.analysis.studies import STUDIES, load_probe
>>> sorted(STUDIES)
['background', 'cls', 'frequency', 'pooling', 'semantic', 'spatial']
"""

from __future__ import annotations

from clipviz.analysis.studies.background import BackgroundResult, background
from clipviz.analysis.studies.cls import ClsResult, cls
from clipviz.analysis.studies.common import Probe, StudyResult, Task, load_probe
from clipviz.analysis.studies.frequency import FrequencyResult, frequency
from clipviz.analysis.studies.pooling import PoolingResult, pooling
from clipviz.analysis.studies.semantic import SemanticResult, semantic
from clipviz.analysis.studies.spatial import SpatialResult, spatial

#: name -> study function, in the order of the issue.
STUDIES = {
    "spatial": spatial,
    "pooling": pooling,
    "cls": cls,
    "semantic": semantic,
    "frequency": frequency,
    "background": background,
}

__all__ = [
    "STUDIES",
    "BackgroundResult",
    "ClsResult",
    "FrequencyResult",
    "PoolingResult",
    "Probe",
    "SemanticResult",
    "SpatialResult",
    "StudyResult",
    "Task",
    "background",
    "cls",
    "frequency",
    "load_probe",
    "pooling",
    "semantic",
    "spatial",
]
