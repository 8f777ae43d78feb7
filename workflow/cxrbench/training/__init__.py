"""Fine-tuning: settings and presets, training input, the resumable loop and the ``cxrbench train`` command."""
