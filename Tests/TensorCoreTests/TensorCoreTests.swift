import Testing
import TensorCore

@Suite struct TensorCoreTests {
    @Test func rngIsDeterministicAndStreamsDiffer() {
        var a = RNG(seed: 1), b = RNG(seed: 1), c = RNG(seed: 1, stream: 2)
        let xs = (0..<5).map { _ in a.next() }
        #expect(xs == (0..<5).map { _ in b.next() })
        #expect(xs != (0..<5).map { _ in c.next() })
    }

    @Test func normalSamplesHaveUnitVariance() {
        var rng = RNG(seed: 3)
        let xs = (0..<20_000).map { _ in rng.nextNormal() }
        let mean = xs.reduce(0, +) / Double(xs.count)
        let variance = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(xs.count)
        #expect(abs(mean) < 0.03 && abs(variance - 1) < 0.05)
    }

    @Test func nextIntStaysInRange() {
        var rng = RNG(seed: 4)
        let values = (0..<1000).map { _ in rng.nextInt(below: 7) }
        #expect(values.allSatisfy { (0..<7).contains($0) } && Set(values).count == 7)
    }

    @Test func stateDictKeepsInsertionOrder() {
        var dict = StateDict()
        dict["b"] = Tensor(zeros: [2])
        dict["a"] = Tensor(repeating: 1, shape: [1, 2])
        dict["b"] = Tensor(repeating: 3, shape: [2])
        #expect(dict.names == ["b", "a"] && dict["b"]?.scalars == [3, 3])
        dict["b"] = nil
        #expect(dict.names == ["a"])
    }

    @Test func floatBufferStartsAtZero() {
        let buffer = FloatBuffer(count: 5)
        #expect(buffer.array == [0, 0, 0, 0, 0])
        buffer[2] = 4
        buffer.zero()
        #expect(buffer[2] == 0)
    }
}
