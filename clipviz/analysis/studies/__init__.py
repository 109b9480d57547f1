"""Analyses of "What do Vision Transformers Learn?" (arXiv:2212.06727) as reproducible studies.

Each study is a function ``study(model, probe, ...) -> result`` whose result dataclass holds the figures per block
(``to_dict()``), a plot (``figure()``) and ``save(out)`` writing ``out/<name>.json`` and ``out/<name>.png``.

>>> import clipviz
>>> from clipviz.analysis.studies import STUDIES, load_probe
>>> sorted(STUDIES)
['background', 'cls', 'frequency', 'pooling', 'semantic', 'spatial']
"""

from __future__ import annotations

from .background import BackgroundResult, background
from .cls import ClsResult, cls
from .common import Probe, StudyResult, Task, load_probe
from .frequency import FrequencyResult, frequency
from .pooling import PoolingResult, pooling
from .semantic import SemanticResult, semantic
from .spatial import SpatialResult, spatial

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
