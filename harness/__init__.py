"""What tests/ and benchmarks/ both need to run the real parts (not shipped in the wheel).

broker.py     a Mosquitto on a free loopback port, from a config file it writes
gateway.py    `python -m gateway run --config FILE` as a process, polled over HTTP
scrape.py     GET a URL; read /metrics as `gateway top` does (gateway/top/scrape.py)
subscriber.py a real MQTT client that keeps every message it receives
launch.py     how those processes are started and stopped (a benchmark brings its own)
poll.py       wait for a condition with a deadline instead of sleeping

Free ports come from the shipped gateway/ports.py (the demo and the supervisor need them too).
"""
