import Collectives
import Testing

struct MessageTagTests {
    @Test func everyKindHasItsOwnTags() {
        let kinds = MessageTag.allCases
        for (i, a) in kinds.enumerated() {
            for b in kinds[(i + 1)...] {
                #expect(!a.tags.overlaps(b.tags), "\(a) \(a.tags) and \(b) \(b.tags) share tags")
            }
        }
    }

    @Test func componentTagsAreValidMPITagsAndTheTCPBackendsAreNegative() {
        for kind in MessageTag.allCases {
            if "\(kind)".hasPrefix("tcp") {
                #expect(kind.tags.upperBound < 0, "\(kind)")
            } else {
                #expect(kind.tags.lowerBound >= 0 && kind.tags.upperBound <= 32_767, "\(kind): MPI guarantees tags up to 32,767")
            }
        }
    }

    @Test func blockTagsWrapWithinTheirBlock() {
        #expect(MessageTag.ringForward.tag(0) == 0x1000)
        #expect(MessageTag.ringGradients.tag(0x1000 + 5) == 0x3005)
        for message in [0, 1, 4095, 4096, 100_003] {
            #expect(MessageTag.ringBackward.tags.contains(MessageTag.ringBackward.tag(message)))
        }
        #expect(MessageTag.expertShardValues.tag(7) == 0x5E02, "a single tag ignores the message number")
    }
}
