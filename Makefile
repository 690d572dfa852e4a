.PHONY: dev test build release bench capacity shards pictures

dev:
	scripts/dev

test:
	scripts/test

build:
	swift build

release:
	swift build -c release --product pushfleet

# Benchmarks side by side with Mosquitto; writes BENCHMARKS.md (about 10 minutes).
bench: release
	scripts/deps test
	python3 scripts/bench.py --bin .build/release/pushfleet

# Redis memory per terminal and per message, measured; with BENCHMARKS.md's CPU figures,
# writes CAPACITY.md (about 2 minutes).
capacity: release
	scripts/deps test
	python3 scripts/capacity.py --bin .build/release/pushfleet

# Redis load over 1, 2 and 3 Redis Cluster shards; writes its section of BENCHMARKS.md and
# CAPACITY.md (about 8 minutes).
shards: release
	scripts/deps test
	python3 scripts/shards.py --bin .build/release/pushfleet

# README's pictures of the admin page and the dashboard, from a fleet under load with
# Prometheus scraping it (about 5 minutes).
pictures: release
	scripts/deps test
	python3 -m pip install -q matplotlib 2>/dev/null || python3 -m pip install -q --break-system-packages matplotlib
	python3 scripts/dashboard-picture.py --bin .build/release/pushfleet
