"""The read side: one module per read model, a runner, and the posture snapshot."""
