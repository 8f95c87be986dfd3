"""Code generated from protos/fastproxy/v1 by scripts/gen_protos.sh. Do not edit."""
