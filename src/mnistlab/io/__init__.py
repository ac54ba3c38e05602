"""What a run leaves behind and shows: callbacks, progress, checkpoints, tracking, export."""
