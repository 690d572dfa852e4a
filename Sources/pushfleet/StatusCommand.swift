import ArgumentParser
import Foundation

/// `pushfleet status`: the fleet on one screen, for an operator on a shell, refreshed in place.
///
/// Everything comes from the control API: its readiness (Redis reachable), the live push nodes
/// and their connections (`GET /v1/nodes`, read scope), and the control node's own counters
/// (`/metrics`). Push rates are those of the control node that answered: behind a balancer with
/// several control nodes each refresh may reach another, and the screen says which it read.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the fleet on one screen (push nodes, connections, push rates, Redis), refreshing."
    )

    @OptionGroup var options: APIOptions

    @Option(help: "Seconds between refreshes (default 2).")
    var interval: Double = 2

    @Flag(help: "Print one screen and exit (for scripts), without clearing the terminal.")
    var once = false

    func validate() throws {
        guard interval >= 0.2 else { throw ValidationError("--interval must be 0.2 s or more") }
    }

    func run() async throws {
        var previous: StatusSnapshot?
        while true {
            let snapshot = await StatusSnapshot.read(options)
            let screen = snapshot.render(previous: previous, api: options.base)
            if once {
                print(screen, terminator: "")
                if snapshot.failure != nil { throw ExitCode(1) }
                return
            }
            // Home and clear, then the screen: one write, no flicker of a half-drawn screen.
            FileHandle.standardOutput.write(Data(("\u{1B}[H\u{1B}[2J" + screen).utf8))
            previous = snapshot
            try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
        }
    }
}

/// What one refresh read.
struct StatusSnapshot {
    struct Node {
        var id: String
        var mqtt: String
        var connections: Int
        var startedAt: Int64?
    }

    var at = Date()
    var ready = false
    var nodes: [Node] = []
    /// The control node's counters: pushes accepted by kind, and their targets.
    var pushes: [String: Double] = [:]
    var targets: Double?
    /// Why the screen is incomplete (the API unreachable, a key without the read scope).
    var failure: String?

    static func read(_ options: APIOptions) async -> StatusSnapshot {
        var snapshot = StatusSnapshot()
        do {
            snapshot.ready = try await options.call("GET", "/readyz").status == 200
            let (status, data) = try await options.call("GET", "/v1/nodes")
            if status == 200, let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                let nodes = object["nodes"] as? [[String: Any]]
            {
                snapshot.nodes = nodes.map { node in
                    Node(
                        id: node["id"] as? String ?? "?", mqtt: node["mqtt"] as? String ?? "-",
                        connections: node["connections"] as? Int ?? 0,
                        startedAt: (node["startedAt"] as? NSNumber)?.int64Value)
                }
            } else {
                snapshot.failure = "GET /v1/nodes answered \(status) (an API key with the read scope is needed: --api-key)"
            }
            let metrics = String(decoding: try await options.call("GET", "/metrics").data, as: UTF8.self)
            for line in metrics.split(separator: "\n") where !line.hasPrefix("#") {
                let parts = line.split(separator: " ")
                guard parts.count >= 2, let value = Double(parts[1]) else { continue }
                if parts[0].hasPrefix("pushfleet_control_pushes_total{"), let kind = parts[0].split(separator: "\"").dropFirst().first {
                    snapshot.pushes[String(kind)] = value
                } else if parts[0].hasPrefix("pushfleet_control_push_targets_total") {
                    snapshot.targets = value
                }
            }
        } catch {
            snapshot.failure = "cannot reach the control API: \(error.localizedDescription)"
        }
        return snapshot
    }

    /// The screen: a header, the push nodes, the pushes this control node accepted and their
    /// rate since `previous`.
    func render(previous: StatusSnapshot?, api: String) -> String {
        var lines: [String] = []
        let time = ISO8601DateFormatter().string(from: at)
        lines.append("PushFleet  \(api)  \(time)")
        lines.append("Redis (through the control node): \(ready ? "ok" : "NOT READY")")
        if let failure { lines.append("! \(failure)") }
        let connections = nodes.reduce(0) { $0 + $1.connections }
        lines.append("")
        lines.append("push nodes: \(nodes.count)   connections: \(connections)")
        if !nodes.isEmpty {
            let width = max(4, nodes.map(\.id.count).max() ?? 4)
            let mqttWidth = max(4, nodes.map(\.mqtt.count).max() ?? 4)
            lines.append(
                "  " + "NODE".padding(width) + "  " + "MQTT".padding(mqttWidth) + "  " + "CONNECTIONS".padding(11, left: true) + "  UP")
            let now = Int64(at.timeIntervalSince1970 * 1000)
            for node in nodes.sorted(by: { $0.id < $1.id }) {
                let up = node.startedAt.map { Self.duration(millis: now - $0) } ?? "-"
                lines.append(
                    "  " + node.id.padding(width) + "  " + node.mqtt.padding(mqttWidth) + "  "
                        + String(node.connections).padding(11, left: true)
                        + "  " + up)
            }
        }
        lines.append("")
        let seconds = previous.map { at.timeIntervalSince($0.at) } ?? 0
        func rate(_ now: Double?, _ then: Double?) -> String {
            guard let now, let then, seconds > 0, now >= then else { return "" }
            return String(format: "  %.1f/s", (now - then) / seconds)
        }
        lines.append("pushes accepted by the control node that answered (since it started):")
        for kind in ["unicast", "topic", "broadcast"] {
            let count = pushes[kind] ?? 0
            lines.append("  " + kind.padding(9) + String(Int(count)).padding(12, left: true) + rate(pushes[kind], previous?.pushes[kind]))
        }
        lines.append("  " + "targets".padding(9) + String(Int(targets ?? 0)).padding(12, left: true) + rate(targets, previous?.targets))
        return lines.joined(separator: "\n") + "\n"
    }

    static func duration(millis: Int64) -> String {
        let minutes = max(0, millis / 60_000)
        if minutes >= 1440 { return "\(minutes / 1440)d \(minutes % 1440 / 60)h" }
        if minutes >= 60 { return "\(minutes / 60)h \(minutes % 60)m" }
        return "\(minutes)m \(max(0, millis / 1000) % 60)s"
    }
}

extension String {
    /// Padded with spaces to `width` (on the left for numbers).
    fileprivate func padding(_ width: Int, left: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - count))
        return left ? fill + self : self + fill
    }
}
