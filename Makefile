.PHONY: dev test build release

dev:
	scripts/dev

test:
	scripts/test

build:
	swift build

release:
	swift build -c release --product pushfleet
