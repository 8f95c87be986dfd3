"""A data-plane node's link to its policy: the Center's WatchPolicy stream or a YAML file,
the snapshot cache, the one holder the hot path reads, and the node's Center credentials."""
