import FleetCore
import Logging
import MQTTCodec
import NIOCore

/// One terminal's MQTT session as a state machine: events come in (packets, Redis replies,
/// routed messages, timers), actions go out (packets to write, Redis commands, timers). It
/// does no I/O and holds no channel: ``MQTTConnectionHandler`` feeds it and performs what it
/// asks for, and tests drive it with a scripted terminal and a manual clock.
///
/// Each event appends its actions to ``actions``; the caller takes them with
/// ``takeActions()`` and performs them in order. An action that leads to a reply (a list
/// read, a registration) is answered by a later event carrying the reply.
///
/// The rules live in extensions by responsibility: `+Connect` (CONNECT, registration,
/// takeover), `+Inbound` (what the terminal sends), `+Subscriptions`, `+Delivery` (what goes
/// to the terminal).
struct MQTTSession {
    /// Where the connection stands. Data that only one phase has travels with it.
    enum Phase {
        case awaitingConnect
        /// CONNECT accepted; admission, registration and a predecessor's stop are under way.
        /// Boxed: an active session does not carry the room for it.
        indirect case connecting(Connecting)
        case active
        /// Node shutdown: no new deliveries; closes once in-flight messages are acknowledged.
        case draining(reason: MQTTReasonCode)
        /// Taken over or kicked: delivers and reads nothing more; the channel is closing.
        case stopped
        case closed
        /// Placeholder while a phase's data is being changed in place.
        case modifying
    }

    /// A session between its CONNECT and its CONNACK.
    struct Connecting {
        /// When the credential was issued, for the revocation check.
        var issuedAt: String
        /// A client id the node made up (MQTT 5 CONNACK tells the client).
        var assignedID: String?
        var step = Step.admitting
        /// Packets that arrived before CONNACK (bounded).
        var packets: [MQTTPacket] = []
        /// Live messages that arrived before the stored backlog was delivered (bounded).
        var deliveries: [EarlyDelivery] = []

        /// `read` is the register script's list read (the backlog's first).
        enum Step {
            /// The connect rate limiter decides.
            case admitting
            /// The register script is under way.
            case registering(read: StoredBacklog.Read)
            /// Registered; the node is making this connection the one it finds.
            case claiming(SessionRegistration, read: StoredBacklog.Read)
            /// The terminal's previous connection is being stopped.
            case awaitingPredecessor(SessionRegistration, read: StoredBacklog.Read)
            /// It stopped; what it left in Redis is being read.
            case reloading(read: StoredBacklog.Read)
        }
    }

    /// A live or routed message that came before the session was active.
    struct EarlyDelivery {
        var message: StoredMessage
        /// The message has a per-terminal status record.
        var tracked: Bool
        /// A terminal's publish routed here (not a push).
        var routed: Bool
        /// The shared filter a routed publish is for.
        var shared: String?
    }

    /// A CONNECT's will, boxed: most terminals have none, and inline it would cost every
    /// session the size of a ``StoredMessage``.
    final class Will {
        let message: StoredMessage
        /// Seconds after the connection ends (MQTT 5 will delay interval).
        let delay: UInt32

        init(message: StoredMessage, delay: UInt32) {
            self.message = message
            self.delay = delay
        }
    }

    typealias Inflight = OutboundWindow.Inflight

    let environment: SessionEnvironment
    var phase = Phase.awaitingConnect
    /// What the events so far ask to be done, in order.
    private(set) var actions: [MQTTSessionAction] = []

    var version = MQTTProtocolVersion.v3_1_1
    var terminal = ""
    /// Where the terminal connects from (the PROXY header's source behind a balancer that
    /// sends one, `--proxy-protocol`); in the logs.
    var peer: PeerAddress?
    var epoch = ""
    var connectedAt: Int64 = 0
    var cleanStart = true
    var keepAlive: TimeAmount = .zero
    /// What the client asked for, when the node granted another session expiry.
    var requestedSessionExpiry: UInt32?
    var requestsProblemInformation = true
    var lastReceived: NIODeadline
    var subscriptions = SubscriptionTable()
    /// Whether the session outlives the connection, and for how many seconds after it.
    var sessionExpiry: UInt32 = 0
    var persistentAtConnect = false
    /// Keep alive the node imposed (MQTT 5 server keep alive), if any.
    var serverKeepAlive: UInt16?
    var will: Will?
    var wasTakenOver = false
    /// What the client accepts (MQTT 5 CONNECT properties).
    var clientReceiveMaximum = Int(UInt16.max)
    var clientMaximumPacketSize = Int.max
    /// Publishes from the terminal: aliases, acknowledgements in order, QoS 2 exchanges.
    var inbound: InboundFlow
    /// QoS 1/2 messages routed to a session that does not outlive its connection, waiting for
    /// room in the window (the client's receive maximum) or a writable socket; bounded.
    var waiting = FIFO<(message: StoredMessage, shared: String?)>()
    /// Messages towards the terminal in flight, their packet ids, outbound topic aliases.
    var outbound = OutboundWindow()
    /// Ids of stored messages delivered for good (acknowledged, or sent at QoS 0) whose LREM
    /// has not been confirmed yet. List reads go out after those LREMs and cannot return
    /// them; a wake event that carries one of them (it raced a read) must not send it twice.
    var removing: Set<String> = []
    /// Where the session stands in the terminal's stored list.
    var backlog = StoredBacklog()
    /// Whether the socket takes more (the channel's writability).
    var writable = true
    /// Publishes of this terminal waiting on Redis (any QoS). At the receive maximum the node
    /// stops reading from the terminal until half of them are done: a terminal that publishes
    /// faster than Redis takes it waits in its own socket, not in the node's memory.
    var routesPending = 0
    /// When the register script went out (wakes that found no session since are caught up on).
    var registerSentAt = NIODeadline.uptimeNanoseconds(0)

    init(environment: SessionEnvironment) {
        self.environment = environment
        self.lastReceived = environment.clock.uptime
        self.inbound = InboundFlow(
            receiveMaximum: environment.configuration.receiveMaximum,
            topicAliasMaximum: environment.configuration.topicAliasMaximum, hasProperties: false)
    }

    var configuration: PushNodeConfiguration { environment.configuration }
    var metrics: PushNodeMetrics { environment.metrics }
    var clock: any SessionClock { environment.clock }

    /// The node's logger with this terminal's id and address; built when something is logged.
    var logger: Logger {
        var logger = environment.logger
        if !terminal.isEmpty { logger[metadataKey: "terminal"] = "\(terminal)" }
        if let peer { logger[metadataKey: "peer"] = "\(peer)" }
        return logger
    }

    /// The actions asked for so far, in order; the session keeps no buffer between events (an
    /// idle connection holds no room for actions).
    mutating func takeActions() -> [MQTTSessionAction] {
        defer { actions = [] }
        return actions
    }

    var hasActions: Bool { !actions.isEmpty }

    // MARK: Connection events

    /// The connection opened: CONNECT has to come within the connect timeout.
    mutating func connectionOpened() {
        emit(.schedule(.connectDeadline, .seconds(Int64(configuration.connectTimeout))))
    }

    mutating func timerFired(_ timer: SessionTimer) {
        switch (timer, phase) {
        case (.connectDeadline, .awaitingConnect):
            close()
        case (.admission, .connecting):
            register()
        case (.takeover(let successor), .connecting):
            logger.info("the previous connection did not confirm it stopped: going ahead")
            predecessorStopped(successor: successor)
        case (.drain, .draining):
            finishDraining()
        default:
            break
        }
    }

    mutating func packetReceived(_ packet: MQTTPacket) {
        lastReceived = clock.uptime
        switch phase {
        case .awaitingConnect:
            guard case .connect(let connect) = packet else {
                logger.debug("first packet is not CONNECT", metadata: ["packet": "\(packet.typeCode)"])
                return close()
            }
            connectReceived(connect)
        case .connecting(var connecting):
            guard connecting.packets.count < 64 else { return protocolError("too many packets before CONNACK") }
            phase = .modifying
            connecting.packets.append(packet)
            phase = .connecting(connecting)
        case .active, .draining:
            process(packet)
        case .stopped, .closed, .modifying:
            break
        }
    }

    mutating func writabilityChanged(_ writable: Bool) {
        self.writable = writable
        if writable, case .active = phase {
            sendWaiting()
            pumpStored()
        }
    }

    /// The terminal sent bytes that are not a valid packet.
    mutating func malformedPacket(_ error: MQTTCodecError) {
        metrics.protocolErrors.increment()
        logger.info("closing connection after a bad packet", metadata: ["error": "\(error)"])
        if version.hasProperties, case .active = phase {
            write(serverDisconnect(error.reasonCode, "\(error)"), flush: true)
        }
        close()
    }

    /// The channel closed: the session leaves the node's index, its route, and publishes
    /// its will.
    mutating func closed() {
        let wasActive: Bool
        switch phase {
        case .active, .draining, .stopped: wasActive = true
        default: wasActive = false
        }
        if case .connecting = phase { unregisterRoute() }
        phase = .closed
        outbound.abandon()
        guard wasActive else { return }
        metrics.connections.decrement()
        leaveLocalIndex()
        unregisterRoute()
        publishWill()
    }

    // MARK: Lifecycle

    /// A newer connection of the same terminal registered: leave without touching the route.
    /// From here on it delivers nothing, so the new connection can start once the actions of
    /// this event are performed: everything this one sent is already on its way to Redis (the
    /// `sent` hash), on the node's one Redis connection, ahead of whatever is sent after this.
    mutating func takenOver(revoked: Bool = false) {
        switch phase {
        case .active, .draining: break
        case .connecting:
            // Not started yet, and never will: the route it wrote is the newer connection's now.
            close()
            phase = .closed
            return
        default: return close()
        }
        phase = .stopped
        logger.info(revoked ? "credentials revoked: closing" : "session taken over")
        wasTakenOver = !revoked
        if version.hasProperties {
            let packet =
                revoked
                ? serverDisconnect(.administrativeAction, "the terminal's credentials were revoked")
                : serverDisconnect(.sessionTakenOver, "another connection took over this session")
            write(packet, flush: true)
        }
        close()
    }

    /// Closes the connection if it still has `epoch` (kick from another node, revocation).
    mutating func kick(epoch: String, revoked: Bool) {
        guard epoch.isEmpty || epoch == self.epoch else { return }
        takenOver(revoked: revoked)
    }

    /// Node shutdown (or shedding load): stop delivering, let in-flight messages be
    /// acknowledged (up to `timeout`) so the terminal does not get them twice elsewhere, then
    /// DISCONNECT with `reason` (MQTT 5: 0x8B server shutting down, 0x9C use another server)
    /// and close. What is not acknowledged stays stored for the next connection.
    mutating func drain(timeout: TimeAmount, reason: MQTTReasonCode = .serverShuttingDown) {
        guard case .active = phase else { return close() }
        phase = .draining(reason: reason)
        if outbound.isEmpty { return finishDraining() }
        emit(.schedule(.drain, timeout))
    }

    mutating func finishDraining() {
        guard case .draining(let reason) = phase else { return }
        if version.hasProperties {
            let text = reason == .useAnotherServer ? "this node sheds load: connect again" : "this node is shutting down"
            write(serverDisconnect(reason, text), flush: true)
        }
        close()
    }

    /// Whether nothing came for 1.5 times the keep alive by `now`.
    func keepAliveExpired(at now: NIODeadline) -> Bool {
        guard keepAlive > .zero else { return false }
        switch phase {
        case .active, .draining: break
        default: return false
        }
        return lastReceived + .nanoseconds(keepAlive.nanoseconds * 3 / 2) <= now
    }

    mutating func keepAliveTimedOut() {
        logger.info("keepalive expired")
        if version.hasProperties { write(serverDisconnect(.keepAliveTimeout, "nothing received for 1.5 x the keep alive"), flush: true) }
        close()
    }

    /// Removes the route (if still this connection's) and ends or keeps the session. A
    /// persistent session whose expiry was lowered to 0 on DISCONNECT also leaves the
    /// stored-subscriber sets.
    mutating func unregisterRoute() {
        guard !terminal.isEmpty else { return }
        var forget: [String] = []
        if persistentAtConnect, sessionExpiry == 0 {
            forget = subscriptions.filters.keys.filter { SharedFilter($0) == nil }
        }
        emit(.unregister(epoch: epoch, expiry: sessionExpiry, forgetStoredFilters: forget))
    }

    // MARK: Output

    mutating func emit(_ action: MQTTSessionAction) {
        // Room for an event's usual actions at once, rather than growing 1, 2, 4; six of 128
        // bytes stay within malloc's per-thread cache (eight did not: 1,056 bytes took its slow
        // path, consolidation and all, twice per message).
        if actions.capacity == 0 { actions.reserveCapacity(6) }
        actions.append(action)
    }

    mutating func write(_ packet: MQTTPacket, flush: Bool) {
        emit(.write(packet))
        if flush { emit(.flush) }
    }

    mutating func flush() {
        emit(.flush)
    }

    mutating func close() {
        if case .closed = phase { return }
        emit(.close)
    }

    mutating func store(_ writes: [SessionWrite]) {
        guard !writes.isEmpty else { return }
        emit(.store(writes))
    }

    /// Records this terminal's state for a message in its status (batched by the node).
    mutating func record(_ messageID: String, _ state: MessageState) {
        emit(.recordState(messageID: messageID, state))
    }

    /// Whether the client accepts reason strings on acknowledgements (MQTT 5 request problem
    /// information; CONNACK and DISCONNECT carry them regardless).
    var wantsProblemInformation: Bool { version.hasProperties && requestsProblemInformation }

    /// A DISCONNECT from the server, with a reason string.
    func serverDisconnect(_ code: MQTTReasonCode, _ reason: String) -> MQTTPacket {
        .disconnect(MQTTDisconnectPacket(reasonCode: code, properties: [MQTTProperty(.reasonString, .string(reason))]))
    }
}
