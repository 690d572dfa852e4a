/// A state a message's copy reached, as the status event stream (``FleetKeys/statusEvents``)
/// carries it.
///
/// One stream entry holds the events of one status write (a push node's tick, a control
/// node's request), up to ``maximumPerEntry``, in its one field `events`: a JSON array of
/// `{"at":<unix ms>,"message":"<id>","state":"<state>","terminal":"<id>"}` in the order the
/// states were reached. One entry per write rather than per event costs Redis one command per
/// write instead of one per message.
public struct StatusEvent: Equatable, Sendable {
    public var message: String
    public var terminal: String
    public var state: MessageState
    /// Unix milliseconds the state was reached.
    public var at: Int64

    public init(message: String, terminal: String, state: MessageState, at: Int64) {
        self.message = message
        self.terminal = terminal
        self.state = state
        self.at = at
    }

    /// The field of a stream entry that holds its events.
    public static let entryField = "events"
    /// Most events in one stream entry: a write with more adds several entries.
    public static let maximumPerEntry = 100

    /// The `events` field of an entry holding `events`.
    public static func encode(_ events: some Collection<StatusEvent>) -> String {
        var json = JSONWriter(capacity: 16 + events.count * 110)
        json.beginArray()
        for event in events { event.write(to: &json) }
        json.endArray()
        return json.text
    }

    /// Writes the event as its JSON object; `id`, when given, as its `id` member.
    package func write(to json: inout JSONWriter, id: String? = nil) {
        json.beginObject()
        json.field("at", integer: at)
        json.field("id", id)
        json.field("message", message)
        json.field("state", state.rawValue)
        json.field("terminal", terminal)
        json.endObject()
    }

    /// The events of an entry's `events` field; nil when it is not such an array.
    public static func decode(_ text: String) -> [StatusEvent]? {
        var text = text
        return text.withUTF8 { bytes in
            var scanner = JSONScanner(bytes)
            let events = scanner.array { scanner -> StatusEvent? in
                var (message, terminal, state, at): (String?, String?, MessageState?, Int64?)
                let read = scanner.object { scanner, key in
                    switch key {
                    case "message": message = scanner.string()
                    case "terminal": terminal = scanner.string()
                    case "state": state = scanner.string().flatMap(MessageState.init(rawValue:))
                    case "at": at = scanner.integer()
                    default: return scanner.skipValue()
                    }
                    return !scanner.failed
                }
                guard read, let message, let terminal, let state, let at else { return nil }
                return StatusEvent(message: message, terminal: terminal, state: state, at: at)
            }
            guard let events, scanner.atEnd() else { return nil }
            return events
        }
    }
}
