"""Test support shared by the services' and the cross-service tests: real
speech from espeak-ng, a real Redis server, free ports. Never imported by
service code."""
