"""Device simulators: a fleet of virtual devices publishing telemetry, faults included, to MQTT."""
