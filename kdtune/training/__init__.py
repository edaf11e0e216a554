"""Training one configuration: context, steps, the loop, checkpoints, the teacher, the cache."""
