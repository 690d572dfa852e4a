import ArgumentParser
import Foundation

/// `pushfleet status`: the fleet on one screen, for an operator on a shell, refreshed in place.
///
/// Everything comes from the control API: its readiness (Redis reachable) and the fleet's
/// figures (`GET /v1/stats`, read scope): the live push nodes with their connections and
/// totals, what waits in the lists, and the live control nodes' totals. Rates are what each
/// node counted between two refreshes (a node that restarted in between is left out of that
/// rate), so they are the whole fleet's, whichever control node answers.
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
    /// One run of a node (`id` and `startedAt`) and its totals since it started.
    struct Run: Hashable {
        var id: String
        var startedAt: Int64
    }

    struct Node {
        var id: String
        var mqtt: String
        var connections: Int64
        var startedAt: Int64?
        var delivered: Int64
        var acknowledged: Int64
    }

    var at = Date()
    var ready = false
    var nodes: [Node] = []
    var queued: Int64 = 0
    var controls = 0
    /// Totals by node run: push nodes' `delivered` and `acknowledged`, control nodes'
    /// `pushes` and `targets`.
    var totals: [Run: [String: Int64]] = [:]
    /// Why the screen is incomplete (the API unreachable, a key without the read scope).
    var failure: String?

    static func read(_ options: APIOptions) async -> StatusSnapshot {
        var snapshot = StatusSnapshot()
        do {
            snapshot.ready = try await options.call("GET", "/readyz").status == 200
            let (status, data) = try await options.call("GET", "/v1/stats")
            guard status == 200, let stats = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                snapshot.failure = "GET /v1/stats answered \(status) (an API key with the read scope is needed: --api-key)"
                return snapshot
            }
            func number(_ object: [String: Any], _ name: String) -> Int64 { (object[name] as? NSNumber)?.int64Value ?? 0 }
            snapshot.queued = number(stats, "queued")
            for node in stats["nodes"] as? [[String: Any]] ?? [] {
                let id = node["id"] as? String ?? "?"
                let startedAt = (node["startedAt"] as? NSNumber)?.int64Value
                snapshot.nodes.append(
                    Node(
                        id: id, mqtt: node["mqtt"] as? String ?? "-", connections: number(node, "connections"), startedAt: startedAt,
                        delivered: number(node, "delivered"), acknowledged: number(node, "acknowledged")))
                snapshot.totals[Run(id: "node " + id, startedAt: startedAt ?? 0)] = [
                    "delivered": number(node, "delivered"), "acknowledged": number(node, "acknowledged"),
                ]
            }
            let controls = stats["controls"] as? [[String: Any]] ?? []
            snapshot.controls = controls.count
            for control in controls {
                let run = Run(id: "control " + (control["id"] as? String ?? "?"), startedAt: number(control, "startedAt"))
                snapshot.totals[run] = ["pushes": number(control, "pushes"), "targets": number(control, "targets")]
            }
        } catch {
            snapshot.failure = "cannot reach the control API: \(error.localizedDescription)"
        }
        return snapshot
    }

    /// The fleet's total of `field` (over the live nodes, since each started).
    func total(_ field: String) -> Int64 {
        totals.values.reduce(0) { $0 + ($1[field] ?? 0) }
    }

    /// What the nodes counted of `field` per second since `previous`, over the runs both saw.
    func rate(_ field: String, since previous: StatusSnapshot?) -> String {
        guard let previous else { return "" }
        let seconds = at.timeIntervalSince(previous.at)
        guard seconds > 0 else { return "" }
        var counted: Int64 = 0
        for (run, now) in totals {
            if let value = now[field], let before = previous.totals[run]?[field] { counted += max(0, value - before) }
        }
        return String(format: "%.1f/s", Double(counted) / seconds)
    }

    /// The screen: a header, the push nodes, the fleet's totals and their rates since `previous`.
    func render(previous: StatusSnapshot?, api: String) -> String {
        var lines: [String] = []
        let time = ISO8601DateFormatter().string(from: at)
        lines.append("PushFleet  \(api)  \(time)")
        lines.append("Redis (through the control node): \(ready ? "ok" : "NOT READY")")
        if let failure { lines.append("! \(failure)") }
        let connections = nodes.reduce(0) { $0 + $1.connections }
        lines.append("")
        lines.append("push nodes: \(nodes.count)   connections: \(connections)   queued: \(queued)")
        if !nodes.isEmpty {
            let width = max(4, nodes.map(\.id.count).max() ?? 4)
            let mqttWidth = max(4, nodes.map(\.mqtt.count).max() ?? 4)
            lines.append(
                "  " + "NODE".padding(width) + "  " + "MQTT".padding(mqttWidth) + "  " + "CONNECTIONS".padding(11, left: true)
                    + "  " + "DELIVERED".padding(10, left: true) + "  " + "ACKED".padding(10, left: true) + "  UP")
            let now = Int64(at.timeIntervalSince1970 * 1000)
            for node in nodes.sorted(by: { $0.id < $1.id }) {
                let up = node.startedAt.map { Self.duration(millis: now - $0) } ?? "-"
                lines.append(
                    "  " + node.id.padding(width) + "  " + node.mqtt.padding(mqttWidth) + "  "
                        + String(node.connections).padding(11, left: true) + "  " + String(node.delivered).padding(10, left: true)
                        + "  " + String(node.acknowledged).padding(10, left: true) + "  " + up)
            }
        }
        lines.append("")
        lines.append("fleet totals since the live nodes started (\(controls) control nodes), and rates:")
        for (field, label) in [("pushes", "pushes in"), ("targets", "targets"), ("delivered", "delivered"), ("acknowledged", "acked")] {
            lines.append("  " + label.padding(10) + String(total(field)).padding(12, left: true) + "  " + rate(field, since: previous))
        }
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
