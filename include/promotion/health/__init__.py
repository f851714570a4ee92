"""Production health: the champion judged on live traffic and the ground truth that arrived later."""
