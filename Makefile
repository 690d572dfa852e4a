.PHONY: dev test build release bench

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
