"""webchat: a horizontally scalable real-time group chat service (PROTOCOL.md v1)."""
