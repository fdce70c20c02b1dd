"""Running an audit: the plan, the runner and its executors, checkpoints and the results database."""
