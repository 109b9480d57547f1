"""clipviz's Hugging Face Space: visualizations, words and examples for the neurons of vision transformers.

Runs as it is (``python app.py``) with the bundled synthetic-world CLIP, so it needs no download. Environment:
``CLIPVIZ_SPACE_MODELS`` (comma-separated model specs offered to visitors; default: the atlas's own model where the
Space can load it, then ``world-clip``) and, when an ``atlas/`` folder made by ``clipviz atlas`` lies beside this
file (``clipviz publish`` puts it there), an Atlas tab that browses it without computing.
"""

import os
from pathlib import Path

from clipviz.apps.space import build_app, live_models

atlas = Path(__file__).absolute().parent / "atlas"  # beside app.py as run (spaces/app.py links here)
atlas = atlas if (atlas / "atlas.json").is_file() else None
app = build_app(models=live_models(atlas, os.environ.get("CLIPVIZ_SPACE_MODELS")), atlas=atlas)

if __name__ == "__main__":
    app.launch()
