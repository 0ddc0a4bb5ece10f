"""The gRPC layer: server, servicer, wire conversion, client, authentication, registration, and
the one table between domain errors and gRPC status codes (:mod:`device_agent.rpc.status`)."""
