"""What every host of the pipeline needs around it (proxies, embedded server, SDK): a
refusal as a gRPC status with its trailers and audit line, grpc workarounds, and the
command line every FastProxy process shares."""
