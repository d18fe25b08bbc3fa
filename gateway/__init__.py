"""The gateway: Envoy configuration helpers and the server+Envoy supervisor."""
