"""The MQTT transport: one link to the broker that the daemon owns (``engine.transport.mqtt``)."""
