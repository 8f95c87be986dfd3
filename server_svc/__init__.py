"""FastProxy server_svc."""
