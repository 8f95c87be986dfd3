"""FastProxy center_svc."""
