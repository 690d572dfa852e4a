import FleetCore
import Testing

struct FleetClockTests {
    @Test func epochsAreShortEnoughToStayInlineAndDoNotRepeat() {
        let epochs = (0..<20_000).map { _ in FleetClock.newEpoch() }
        #expect(epochs.allSatisfy { $0.utf8.count <= 15 && $0.utf8.count >= 12 })
        #expect(Set(epochs).count == epochs.count)
    }
}
