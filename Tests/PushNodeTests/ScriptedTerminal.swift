import FleetCore
import Logging
import MQTTCodec
import NIOConcurrencyHelpers
import NIOCore

@testable import PushNode

/// A clock the test moves by hand.
final class ManualClock: SessionClock {
    private let state = NIOLockedValueBox((wall: Int64(1_800_000_000_000), uptime: NIODeadline.uptimeNanoseconds(1_000_000_000_000)))

    var wallMillis: Int64 { state.withLockedValue { $0.wall } }
    var uptime: NIODeadline { state.withLockedValue { $0.uptime } }

    func advance(_ amount: TimeAmount) {
        state.withLockedValue { state in
            state.wall += amount.nanoseconds / 1_000_000
            state.uptime = state.uptime + amount
        }
    }
}

/// One ``MQTTSession`` driven by a test: the test plays the terminal (packets in, packets out)
/// and the connection (Redis replies, timers), with a manual clock. No socket, no Redis.
struct ScriptedTerminal {
    static let secret = "session-tests-secret-32-bytes-ok"
    let clock = ManualClock()
    let credentials = CredentialAuthority(secret: Self.secret)
    var session: MQTTSession
    private var counter = 0

    init(anonymous: Bool = true, nodeID: String = "n1", _ configure: (inout PushNodeConfiguration) -> Void = { _ in }) {
        var configuration = PushNodeConfiguration(
            redis: .init(host: "127.0.0.1"), mqttHost: "127.0.0.1", mqttPort: 0, nodeID: nodeID, secret: Self.secret)
        configuration.allowAnonymous = anonymous
        configuration.maximumSessionExpiry = 3600
        configure(&configuration)
        let ids = NIOLockedValueBox(0)
        let environment = SessionEnvironment(
            configuration: configuration, credentials: credentials,
            acl: TopicACL(subscribe: configuration.publicTopicFilters, publish: configuration.publishTopicFilters, open: anonymous),
            local: LocalSubscriptions(), metrics: PushNodeMetrics(),
            logger: Logger(label: "session-tests", factory: { _ in SwiftLogNoOpLogHandler() }), clock: clock,
            newID: {
                ids.withLockedValue {
                    $0 += 1
                    return "e\($0)"
                }
            })
        session = MQTTSession(environment: environment)
        _ = feed { $0.connectionOpened() }
    }

    /// Feeds one event and returns the actions it asked for.
    mutating func feed(_ event: (inout MQTTSession) -> Void) -> [MQTTSessionAction] {
        event(&session)
        return session.takeActions()
    }

    /// The terminal sends `packet`.
    mutating func send(_ packet: MQTTPacket) -> [MQTTSessionAction] {
        feed { $0.packetReceived(packet) }
    }

    /// Connects and drives the session to active: admitted, registered with `registration`,
    /// no earlier connection. Returns the actions of the registration reply (CONNACK, ...).
    mutating func connect(
        _ version: MQTTProtocolVersion = .v5, clientID: String = "t1", cleanStart: Bool = true, keepAlive: UInt16 = 0,
        properties: MQTTProperties = [], registration: SessionRegistration = SessionRegistration()
    ) -> [MQTTSessionAction] {
        let connect = MQTTConnectPacket(
            protocolVersion: version, clientIdentifier: clientID, cleanStart: cleanStart, keepAlive: keepAlive, properties: properties)
        let admit = send(.connect(connect))
        precondition(admit.contains { if case .admit = $0 { true } else { false } }, "CONNECT not admitted: \(admit)")
        _ = feed { $0.admitted() }
        return registered(registration)
    }

    /// Answers the register script and the claim of the handle (no earlier connection here).
    mutating func registered(_ registration: SessionRegistration, missedWake: Bool = false) -> [MQTTSessionAction] {
        let claim = feed { $0.registered(.success(registration)) }
        guard claim.contains(where: { if case .claimHandle = $0 { true } else { false } }) else { return claim }
        return feed { $0.handleClaimed(previousHere: false, missedWake: missedWake) }
    }

    /// A stored entry for a push (or, with `session`, a message kept for a subscription).
    static func entry(_ id: String, qos: UInt8 = 1, topic: String = "push/t1", session: Bool = false, expiresAt: Int64 = 0) -> String {
        var message = StoredMessage(id: id, qos: qos, expiresAt: expiresAt, topic: topic, payload: Array(id.utf8))
        if session { message.session = true }
        return message.encoded()
    }

    static func message(_ id: String, qos: UInt8 = 1, topic: String = "push/t1") -> StoredMessage {
        StoredMessage(id: id, qos: qos, expiresAt: 0, topic: topic, payload: Array(id.utf8))
    }
}

extension Array where Element == MQTTSessionAction {
    /// The packets written, in order.
    var written: [MQTTPacket] {
        compactMap { if case .write(let packet) = $0 { packet } else { nil } }
    }

    var publishes: [MQTTPublishPacket] {
        written.compactMap { if case .publish(let publish) = $0 { publish } else { nil } }
    }

    /// The ids of the messages published (push payloads are their ids in these tests).
    var publishedIDs: [String] {
        publishes.map { String(buffer: $0.payload) }
    }

    var closes: Bool { contains { if case .close = $0 { true } else { false } } }

    var reads: [StoredBacklog.Read] {
        compactMap { if case .readStored(let read) = $0 { read } else { nil } }
    }

    var storeWrites: [SessionWrite] {
        flatMap { action -> [SessionWrite] in
            switch action {
            case .store(let writes), .storeRemoving(let writes, _), .recordSubscriptions(let writes, _): writes
            default: []
            }
        }
    }

    var recordedStates: [String: MessageState] {
        var states: [String: MessageState] = [:]
        for case .recordState(let id, let state) in self { states[id] = state }
        return states
    }

    var connAck: MQTTConnAckPacket? {
        written.lazy.compactMap { if case .connAck(let ack) = $0 { ack } else { nil } }.first
    }

    var disconnect: MQTTDisconnectPacket? {
        written.lazy.compactMap { if case .disconnect(let packet) = $0 { packet } else { nil } }.first
    }

    func contains(_ timer: SessionTimer) -> Bool {
        contains { if case .schedule(timer, _) = $0 { true } else { false } }
    }
}
