"""clipviz's Hugging Face Space: visualizations, words and examples for the neurons of vision transformers.

Runs as it is (``python app.py``) with the bundled synthetic-world CLIP, so it needs no download. Environment:
``CLIPVIZ_SPACE_MODELS`` (comma-separated model specs offered to visitors; default ``world-clip``) and, when an
``atlas/`` folder made by ``clipviz atlas`` lies beside this file (``clipviz publish`` puts it there), an Atlas tab
that browses it without computing.
"""

import os
from pathlib import Path

from clipviz.apps.space import build_app

atlas = Path(__file__).absolute().parent / "atlas"  # beside app.py as run (spaces/app.py links here)
models = tuple(m.strip() for m in os.environ.get("CLIPVIZ_SPACE_MODELS", "world-clip").split(",") if m.strip())
app = build_app(models=models, atlas=atlas if (atlas / "atlas.json").is_file() else None)

if __name__ == "__main__":
    app.launch()
