"""Strict fakes of servers that cannot be installed on development machines (Kong, Consul).

Each is written from the server's official HTTP API documentation, listens on 127.0.0.1
port 0, keeps state, and rejects what the real server rejects with the same status and body.
"""
