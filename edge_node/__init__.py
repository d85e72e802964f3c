"""The edge node: the draft model and the strategy loop (`python -m edge_node`)."""
