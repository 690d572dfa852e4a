import FleetCore
import MQTTCodec
import NIOCore
import Testing

@testable import PushNode

/// The session's connect, takeover, keep alive and drain, with a scripted terminal and a
/// manual clock: no socket, no Redis.
struct MQTTSessionConnectTests {
    @Test func aConnectionThatSendsNoConnectInTimeIsClosed() {
        var terminal = ScriptedTerminal()
        #expect(terminal.feed { $0.timerFired(.connectDeadline) }.closes)
        // Once CONNECT came, the deadline no longer applies.
        var connected = ScriptedTerminal()
        _ = connected.connect()
        #expect(!connected.feed { $0.timerFired(.connectDeadline) }.closes)
    }

    @Test func aFirstPacketOtherThanConnectCloses() {
        var terminal = ScriptedTerminal()
        let actions = terminal.send(.pingReq)
        #expect(actions.closes)
        #expect(actions.written.isEmpty)
    }

    @Test func eachRefusalAnswersWithItsCodeAndCloses() {
        // No credential where one is required.
        var strict = ScriptedTerminal(anonymous: false)
        var actions = strict.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        #expect(actions.connAck?.reasonCode == .badUserNameOrPassword)
        #expect(actions.closes)
        // A wrong credential, 3.1.1 format.
        var wrong = ScriptedTerminal(anonymous: false)
        actions = wrong.send(.connect(MQTTConnectPacket(clientIdentifier: "t1", password: Array("not-a-credential".utf8))))
        #expect(actions.connAck?.reasonCode == .v3NotAuthorized)
        #expect(actions.closes)
        // A valid credential gets as far as admission.
        var valid = ScriptedTerminal(anonymous: false)
        let password = valid.credentials.issue(terminal: "t1", ttl: 60, nowMillis: valid.clock.wallMillis).password
        actions = valid.send(.connect(MQTTConnectPacket(clientIdentifier: "t1", password: Array(password.utf8))))
        #expect(actions.contains { if case .admit = $0 { true } else { false } })
        #expect(actions.connAck == nil)
        // The connect rate limiter refuses.
        actions = valid.feed { $0.throttled() }
        #expect(actions.connAck?.reasonCode == .v3ServerUnavailable)
        #expect(actions.closes)
        // A revoked credential (the register script says so), MQTT 5.
        var revoked = ScriptedTerminal()
        _ = revoked.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        _ = revoked.feed { $0.admitted() }
        actions = revoked.feed { $0.registered(.failure(SessionRegistration.Failure.revoked)) }
        #expect(actions.connAck?.reasonCode == .notAuthorized)
        // Redis unavailable at registration.
        var unavailable = ScriptedTerminal()
        _ = unavailable.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        _ = unavailable.feed { $0.admitted() }
        actions = unavailable.feed { $0.registered(.failure(SessionRegistration.Failure.unexpectedReply(.null))) }
        #expect(actions.connAck?.reasonCode == .serverUnavailable)
        #expect(actions.closes)
        // A second CONNECT is a protocol error.
        var twice = ScriptedTerminal()
        _ = twice.connect()
        actions = twice.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        #expect(actions.disconnect?.reasonCode == .protocolError)
        #expect(actions.closes)
    }

    @Test func anAdmissionDelayRegistersWhenItIsOver() {
        var terminal = ScriptedTerminal()
        _ = terminal.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        var actions = terminal.feed { $0.admitted(after: .milliseconds(30)) }
        #expect(actions.contains(.admission))
        #expect(!actions.contains { if case .register = $0 { true } else { false } })
        actions = terminal.feed { $0.timerFired(.admission) }
        guard case .register(let request) = actions.first else { Issue.record("no registration: \(actions)"); return }
        #expect(request.epoch == terminal.session.epoch)
        #expect(request.readCount == 32)
    }

    @Test func packetsBeforeConnAckAreHandledAfterItInOrderAndBounded() {
        var terminal = ScriptedTerminal()
        _ = terminal.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        _ = terminal.feed { $0.admitted() }
        #expect(terminal.send(.pingReq).written.isEmpty)
        let actions = terminal.registered(SessionRegistration())
        #expect(actions.written.map(\.typeCode) == [MQTTPacket.connAck(MQTTConnAckPacket()).typeCode, MQTTPacket.pingResp.typeCode])
        // More than 64 packets before CONNACK: a protocol error.
        var flood = ScriptedTerminal()
        _ = flood.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        _ = flood.feed { $0.admitted() }
        for _ in 0..<64 { #expect(!flood.send(.pingReq).closes) }
        #expect(flood.send(.pingReq).closes)
    }

    @Test func aTakeoverOnThisNodeWaitsForThePredecessorThenRedeliversWithDUP() {
        var terminal = ScriptedTerminal()
        _ = terminal.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1", cleanStart: false)))
        _ = terminal.feed { $0.admitted() }
        var actions = terminal.feed { $0.registered(.success(SessionRegistration(oldNode: "n1", oldEpoch: "old"))) }
        #expect(actions.contains { if case .claimHandle = $0 { true } else { false } })
        actions = terminal.feed { $0.handleClaimed(previousHere: true, missedWake: false) }
        let epoch = terminal.session.epoch
        #expect(actions.contains(.takeover(successor: epoch)))
        #expect(actions.contains { if case .stopLocalPredecessor(epoch) = $0 { true } else { false } })
        #expect(actions.connAck == nil)
        // A stop confirmation for another connection changes nothing.
        #expect(terminal.feed { $0.predecessorStopped(successor: "someone-else") }.isEmpty)
        actions = terminal.feed { $0.predecessorStopped(successor: epoch) }
        #expect(actions.connAck == nil)
        #expect(actions.contains { if case .reload = $0 { true } else { false } })
        // What the predecessor sent and did not see acknowledged goes out again with DUP and
        // its packet id.
        let reloaded = SessionRegistration(
            sessionExisted: true, queue: [ScriptedTerminal.entry("m1"), ScriptedTerminal.entry("m2")], sent: ["m1": 9])
        actions = terminal.feed { $0.reloaded(.success(reloaded)) }
        #expect(actions.connAck?.sessionPresent == true)
        #expect(actions.publishes.map(\.dup) == [true, false])
        #expect(actions.publishes.map(\.packetIdentifier) == [9, 1])
        #expect(actions.publishedIDs == ["m1", "m2"])
        // The timeout after the stop came does nothing more.
        #expect(terminal.feed { $0.timerFired(.takeover(successor: epoch)) }.written.isEmpty)
    }

    @Test func aTakeoverFromAnotherNodeKicksItAndWaitsUnlessNobodyListens() {
        var terminal = ScriptedTerminal()
        _ = terminal.connectPending(oldNode: "n2")
        var actions = terminal.feed { $0.handleClaimed(previousHere: false, missedWake: false) }
        guard case .kick(let node, let event) = actions.last else { Issue.record("no kick: \(actions)"); return }
        #expect(node == "n2")
        #expect(event.successor == terminal.session.epoch)
        #expect(event.from == "n1")
        // Heard: the old node answers with `stopped`; until then no CONNACK.
        #expect(terminal.feed { $0.kickAnswered(listeners: 1) }.connAck == nil)
        // It never answers: after the timeout the session reads what was left and starts.
        let epoch = terminal.session.epoch
        actions = terminal.feed { $0.timerFired(.takeover(successor: epoch)) }
        #expect(actions.contains { if case .reload = $0 { true } else { false } })
        #expect(terminal.feed { $0.reloaded(.success(SessionRegistration())) }.connAck != nil)

        // Nobody listens on the old node's channel (it died): start at once, without a reload.
        var orphan = ScriptedTerminal()
        _ = orphan.connectPending(oldNode: "n2")
        _ = orphan.feed { $0.handleClaimed(previousHere: false, missedWake: false) }
        actions = orphan.feed { $0.kickAnswered(listeners: 0) }
        #expect(actions.connAck?.reasonCode == .success)
        #expect(!actions.contains { if case .reload = $0 { true } else { false } })
    }

    @Test func theTakenOverSessionStopsDeliveringAndKeepsItsWillForTheSuccessor() {
        var old = ScriptedTerminal()
        _ = old.connect(properties: [MQTTProperty(.sessionExpiryInterval, .fourByteInteger(60))])
        var actions = old.feed { $0.takenOver() }
        #expect(actions.disconnect?.reasonCode == .sessionTakenOver)
        #expect(actions.closes)
        // Nothing more goes out on it.
        #expect(old.feed { $0.deliverLive(ScriptedTerminal.message("late"), tracked: true) }.written.isEmpty)
        #expect(old.feed { $0.wake(entries: [ScriptedTerminal.entry("late")]) }.isEmpty)
        actions = old.feed { $0.closed() }
        #expect(actions.contains { if case .unregister = $0 { true } else { false } })
        // A kick for an older epoch leaves a newer connection alone.
        var current = ScriptedTerminal()
        _ = current.connect()
        #expect(current.feed { $0.kick(epoch: "older", revoked: false) }.isEmpty)
        let epoch = current.session.epoch
        actions = current.feed { $0.kick(epoch: epoch, revoked: true) }
        #expect(actions.disconnect?.reasonCode == .administrativeAction)
    }

    @Test func aWakeDuringRegistrationIsNotLost() {
        // The register script read an empty list; an entry stored after that read announced
        // itself while the session was not findable yet (the registry kept the missed wake).
        var terminal = ScriptedTerminal()
        _ = terminal.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        _ = terminal.feed { $0.admitted() }
        let actions = terminal.registered(SessionRegistration(), missedWake: true)
        #expect(actions.connAck != nil)
        #expect(actions.reads.count == 1)
        // Without a missed wake the empty list is caught up: no read.
        var quiet = ScriptedTerminal()
        #expect(quiet.connect().reads.isEmpty)
    }

    @Test func keepAliveExpiresAtOneAndAHalfTimesWithoutPackets() {
        var terminal = ScriptedTerminal()
        let actions = terminal.connect(keepAlive: 10)
        #expect(actions.contains { if case .watchKeepAlive = $0 { true } else { false } })
        let start = terminal.clock.uptime
        #expect(!terminal.session.keepAliveExpired(at: start + .seconds(14)))
        #expect(terminal.session.keepAliveExpired(at: start + .seconds(15)))
        // A packet restarts it.
        terminal.clock.advance(.seconds(10))
        _ = terminal.send(.pingReq)
        #expect(!terminal.session.keepAliveExpired(at: start + .seconds(15)))
        #expect(terminal.session.keepAliveExpired(at: start + .seconds(25)))
        let timedOut = terminal.feed { $0.keepAliveTimedOut() }
        #expect(timedOut.disconnect?.reasonCode == .keepAliveTimeout)
        #expect(timedOut.closes)
        // Keep alive 0: never.
        var none = ScriptedTerminal()
        #expect(!none.connect(keepAlive: 0).contains { if case .watchKeepAlive = $0 { true } else { false } })
        #expect(!none.session.keepAliveExpired(at: start + .seconds(100_000)))
    }

    @Test func drainWaitsForInFlightAcknowledgementsThenDisconnects() {
        var terminal = ScriptedTerminal()
        _ = terminal.connect(registration: SessionRegistration(queue: [ScriptedTerminal.entry("m1")]))
        var actions = terminal.feed { $0.drain(timeout: .seconds(5)) }
        #expect(actions.contains(.drain))
        #expect(!actions.closes)
        // No new deliveries while draining.
        #expect(terminal.feed { $0.deliverLive(ScriptedTerminal.message("new"), tracked: true) }.publishes.isEmpty)
        actions = terminal.send(.pubAck(MQTTAckPacket(packetIdentifier: 1)))
        #expect(actions.disconnect?.reasonCode == .serverShuttingDown)
        #expect(actions.closes)
        // Nothing in flight: at once; shedding load says "use another server".
        var idle = ScriptedTerminal()
        _ = idle.connect()
        actions = idle.feed { $0.drain(timeout: .seconds(5), reason: .useAnotherServer) }
        #expect(actions.disconnect?.reasonCode == .useAnotherServer)
        // The grace runs out with a message unacknowledged: disconnect all the same.
        var slow = ScriptedTerminal()
        _ = slow.connect(registration: SessionRegistration(queue: [ScriptedTerminal.entry("m1")]))
        _ = slow.feed { $0.drain(timeout: .seconds(5)) }
        #expect(slow.feed { $0.timerFired(.drain) }.closes)
    }
}

extension ScriptedTerminal {
    /// CONNECT, admitted, registered with a previous connection on `oldNode`: waiting for the
    /// handle claim.
    mutating func connectPending(oldNode: String) -> [MQTTSessionAction] {
        _ = send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1", cleanStart: false)))
        _ = feed { $0.admitted() }
        return feed { $0.registered(.success(SessionRegistration(oldNode: oldNode, oldEpoch: "old"))) }
    }
}
