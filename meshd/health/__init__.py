"""Health checks of backend hosts and the load-balancing state they drive (relayd / l4ip style)."""
