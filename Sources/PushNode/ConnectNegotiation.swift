import FleetCore
import MQTTCodec

/// What a CONNECT gets: the terms of the session, or a refusal with its reason codes. Pure:
/// the CONNECT, the node's rules, its credential authority and the time go in, a decision
/// comes out; the connection handler applies it.
enum ConnectNegotiation {
    /// The session a CONNECT opens.
    struct Terms {
        var version: MQTTProtocolVersion
        var cleanStart: Bool
        /// The terminal id (the client id, escaped in anonymous mode when it is not key-safe).
        var terminal: String
        /// A client id the node made up for an empty one (MQTT 5 tells the client).
        var assignedID: String? = nil
        /// Seconds the session outlives the connection (0: it ends with it).
        var sessionExpiry: UInt32 = 0
        /// What the client asked for, when the node granted something else (MQTT 5 says so).
        var requestedSessionExpiry: UInt32? = nil
        var requestsProblemInformation: Bool
        var clientReceiveMaximum: Int? = nil
        var clientMaximumPacketSize: Int? = nil
        var clientTopicAliasMaximum: UInt16 = 0
        /// When the credential was issued, for the revocation check ("" for none).
        var issuedAt = ""
        var will: MQTTSession.Will? = nil
        var keepAliveSeconds: UInt16
        /// A keep alive the node sets instead of the client's (MQTT 5 CONNACK).
        var serverKeepAlive: UInt16? = nil
    }

    /// A CONNECT refused: CONNACK with `v3` (3.1.1) or `v5` (5.0), in `version`'s format.
    struct Refusal: Error, Equatable {
        var version: MQTTProtocolVersion
        var requestsProblemInformation: Bool
        var v3: MQTTReasonCode
        var v5: MQTTReasonCode
        /// For the client (MQTT 5 reason string, if it wants problem information).
        var reason: String?
        /// For the node's log only.
        var detail: String?
    }

    /// Decides what `connect` gets. `now` is unix seconds; `newID` makes a client id for an
    /// empty one.
    static func negotiate(
        _ connect: MQTTConnectPacket, configuration: PushNodeConfiguration, credentials: CredentialAuthority, now: Int64,
        newID: () -> String
    ) -> Result<Terms, Refusal> {
        let version = connect.protocolVersion
        let problemInformation = connect.properties.integer(.requestProblemInformation) != 0
        func refuse(_ v3: MQTTReasonCode, _ v5: MQTTReasonCode, _ reason: String? = nil, detail: String? = nil) -> Result<Terms, Refusal> {
            .failure(
                Refusal(version: version, requestsProblemInformation: problemInformation, v3: v3, v5: v5, reason: reason, detail: detail))
        }
        guard version.isSupported else {
            // Answered in the 3.1.1 format: a client of an unknown version can parse that.
            return .failure(
                Refusal(
                    version: .v3_1_1, requestsProblemInformation: false, v3: .v3UnacceptableProtocolVersion, v5: .unsupportedProtocolVersion
                ))
        }
        var terms = Terms(
            version: version, cleanStart: connect.cleanStart, terminal: connect.clientIdentifier,
            requestedSessionExpiry: connect.properties.integer(.sessionExpiryInterval), requestsProblemInformation: problemInformation,
            keepAliveSeconds: connect.keepAlive)
        let maximumExpiry = UInt32(clamping: configuration.maximumSessionExpiry)
        if version.hasProperties {
            let properties = connect.properties
            // Enhanced authentication (AUTH exchanges) is not offered.
            if properties[.authenticationMethod] != nil {
                return refuse(.v3NotAuthorized, .badAuthenticationMethod, "enhanced authentication is not offered")
            }
            if let value = properties.integer(.receiveMaximum) {
                guard value > 0 else { return refuse(.v3ServerUnavailable, .protocolError, "receive maximum 0") }
                terms.clientReceiveMaximum = Int(value)
            }
            if let value = properties.integer(.maximumPacketSize) {
                guard value > 0 else { return refuse(.v3ServerUnavailable, .protocolError, "maximum packet size 0") }
                terms.clientMaximumPacketSize = Int(value)
            }
            terms.clientTopicAliasMaximum = UInt16(clamping: properties.integer(.topicAliasMaximum) ?? 0)
            terms.sessionExpiry = min(properties.integer(.sessionExpiryInterval) ?? 0, maximumExpiry)
        } else {
            terms.sessionExpiry = connect.cleanStart ? 0 : maximumExpiry
        }

        if terms.terminal.isEmpty {
            guard configuration.allowAnonymous, connect.cleanStart || version.hasProperties else {
                return refuse(.v3IdentifierRejected, .clientIdentifierNotValid)
            }
            terms.terminal = "auto-" + newID()
            terms.assignedID = terms.terminal
        }
        if !TerminalID.isValid(terms.terminal) {
            // Any client id MQTT allows is taken in anonymous mode, under a key-safe name.
            guard configuration.allowAnonymous, terms.terminal.utf8.count <= 256 else {
                return refuse(.v3IdentifierRejected, .clientIdentifierNotValid)
            }
            terms.terminal = TerminalID.escaped(terms.terminal)
        }

        if let password = connect.passwordString, !password.isEmpty {
            guard connect.username == nil || connect.username == terms.terminal else {
                return refuse(.v3NotAuthorized, .notAuthorized, detail: "the user name is not the client id")
            }
            switch credentials.verify(terminal: terms.terminal, password: password, now: now) {
            case .success(let verified): terms.issuedAt = String(verified.issuedAt)
            case .failure(let failure): return refuse(.v3NotAuthorized, .notAuthorized, "credential refused", detail: "\(failure)")
            }
        } else if !configuration.allowAnonymous {
            return refuse(.v3BadUserNameOrPassword, .badUserNameOrPassword, "a credential is required as the password")
        }

        if connect.properties.userPropertyBytes + (connect.will?.properties.userPropertyBytes ?? 0) > configuration.maximumUserPropertyBytes
        {
            return refuse(.v3NotAuthorized, .packetTooLarge, "user properties over \(configuration.maximumUserPropertyBytes) bytes")
        }
        if let will = connect.will {
            // Published later as the terminal's PUBLISH would be: the same rules for its topic.
            guard MQTTTopic.isValidTopicName(will.topic), MQTTTopic.levelCount(will.topic) <= configuration.maximumTopicLevels else {
                return refuse(.v3NotAuthorized, .topicNameInvalid, "the will topic is not a valid topic name")
            }
            guard !will.retain || will.payload.readableBytes <= configuration.maximumRetainedSize else {
                return refuse(.v3NotAuthorized, .quotaExceeded, "a retained will over \(configuration.maximumRetainedSize) bytes")
            }
            let message = StoredMessage(
                published: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, properties: will.properties,
                origin: terms.terminal)
            terms.will = MQTTSession.Will(message: message, delay: will.properties.integer(.willDelayInterval) ?? 0)
        }
        let maximumKeepAlive = configuration.maximumKeepAlive
        if version.hasProperties, maximumKeepAlive > 0, terms.keepAliveSeconds == 0 || Int(terms.keepAliveSeconds) > maximumKeepAlive {
            // MQTT 5 lets the server set the keep alive (CONNACK server keep alive); a 3.1.1
            // client cannot be told, so it keeps its own.
            terms.keepAliveSeconds = UInt16(clamping: maximumKeepAlive)
            terms.serverKeepAlive = terms.keepAliveSeconds
        }
        return .success(terms)
    }
}
