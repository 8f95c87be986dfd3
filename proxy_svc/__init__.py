"""FastProxy proxy_svc."""
