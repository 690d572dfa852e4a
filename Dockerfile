# Build: Swift 6 toolchain with hiredis headers.
FROM swift:6.1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libhiredis-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product pushfleet --static-swift-stdlib \
    && cp "$(swift build -c release --show-bin-path)/pushfleet" /pushfleet

# Run: slim Debian with the hiredis runtime library.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libhiredis0.14 libcurl4 ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 pushfleet
COPY --from=build /pushfleet /usr/local/bin/pushfleet
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001
ENTRYPOINT ["/usr/local/bin/pushfleet"]
