"""What is computed on a model and data: top dataset examples, concept words (direct lens, CLIP-Dissect, visual)."""
