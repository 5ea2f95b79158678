"""Sinks: durable JSON Lines segments for readings (FileSink) and rejections (DeadLetterSink)."""
