"""`dsonode demo`: the main job on the embedded defaults (what `make run` runs)."""
