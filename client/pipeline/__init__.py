"""The protocol core: what happens to a call and its messages, as plain code over bytes.

No gRPC, no asyncio, no clock it is not handed: sealing and opening, the call stages
(authenticate, authorize, rate-limit), the compiled node policy, and the failure reasons.
Every host (the proxies, the embedded SDK, the embedded server) drives these same objects.
"""
