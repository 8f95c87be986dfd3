"""Code generated from protos/fastproxy/etcd by scripts/gen_protos.sh. Do not edit."""
