import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """name -> (facts, spec) for a tiny saved model of every supported architecture."""
    from tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny-models"))
