/// A first-in first-out queue that allocates nothing while empty (most connections never
/// queue anything; NIO's `CircularBuffer` reserves 16 elements up front).
struct FIFO<Element> {
    private var items: [Element] = []
    private var head = 0

    var isEmpty: Bool { head == items.count }
    var count: Int { items.count - head }
    var first: Element? { isEmpty ? nil : items[head] }

    mutating func append(_ element: Element) { items.append(element) }

    mutating func removeFirst() {
        head += 1
        if head == items.count {
            items = []
            head = 0
        } else if head >= 64 && head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
    }
}
