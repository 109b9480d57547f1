"""Feature visualization: parameterisations, augmentations, penalties, objectives, recipes, the optimisation loop
and the batched, resumable, multi-process orchestration (``visualize``)."""
