import Foundation

/// The conformance suite every backend must pass (the unit tests run it on the in-process and
/// TCP backends, `tessera selftest comm` runs it under `mpirun` and `tessera launch`).
///
/// Each check feeds every rank a deterministic input, verifies the rank's own result against a
/// sequential reference (Float64 sums, Float32 tolerance), then verifies that every rank holds
/// bitwise the same result (by hashing it and gathering the hashes). A check passes only when it
/// passes on every rank.
public enum CommunicatorConformance {
    public struct Outcome: Sendable, CustomStringConvertible {
        public var name: String
        public var failure: String?
        public var passed: Bool { failure == nil }
        public var description: String { "\(passed ? "PASS" : "FAIL") \(name)\(failure.map { ": " + $0 } ?? "")" }
    }

    /// Lengths every element-count check runs: empty, one, odd, and about a million (prime).
    public static func defaultLengths(large: Int = 1_000_003) -> [Int] { [0, 1, 7, large] }

    public static func run(_ comm: Communicator, lengths: [Int] = defaultLengths()) throws -> [Outcome] {
        var suite = Suite(comm: comm)
        for n in lengths {
            for op in ReduceOp.allCases { try suite.allReduce(n, op) }
            try suite.broadcast(n, root: 0)
            try suite.broadcast(n, root: comm.size - 1)
            try suite.allGather(perRank: n / comm.size)
            try suite.reduceScatter(block: n / comm.size, .sum)
            try suite.reduceScatter(block: n / comm.size, .average)
            try suite.allToAll(block: n / (comm.size * comm.size))
            try suite.sendReceive(n)
        }
        try suite.allGatherVariable()
        try suite.allToAllVariable()
        try suite.barrier()
        try suite.split()
        return suite.outcomes
    }

    /// Rank r's input value i: irregular, sign-changing, distinct per rank.
    static func input(_ rank: Int, _ i: Int) -> Float {
        Float(sin(Double(i) * 0.37 + Double(rank) * 1.3) * Double(rank + 1))
    }

    struct Suite {
        let comm: Communicator
        var outcomes: [Outcome] = []
        var rank: Int { comm.rank }
        var size: Int { comm.size }

        /// Records a check: local verdict and bitwise agreement, both agreed on by all ranks.
        mutating func record(_ name: String, local: String?, result: UnsafeRawBufferPointer?) throws {
            var failure = local
            let hashes = try comm.allGatherBytes(Self.fnv(result))
            if failure == nil, Set(hashes).count != 1 {
                failure = "results differ between ranks (hashes of ranks \(hashes.indices.filter { hashes[$0] != hashes[0] }) differ from rank 0)"
            }
            let failedAnywhere = try comm.allReduce(failure == nil ? 0 : 1, op: .max)
            if failure == nil, failedAnywhere > 0 { failure = "failed on another rank" }
            outcomes.append(Outcome(name: "\(name) [\(comm.backendName), \(size) ranks]", failure: failure))
        }

        static func fnv(_ bytes: UnsafeRawBufferPointer?) -> [UInt8] {
            var h: UInt64 = 0xCBF2_9CE4_8422_2325
            for b in bytes ?? UnsafeRawBufferPointer(start: nil, count: 0) { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
            return withUnsafeBytes(of: h) { Array($0) }
        }

        static func close(_ got: Float, _ want: Double) -> Bool {
            abs(Double(got) - want) <= 1e-5 * max(1, abs(want))
        }

        static func firstMismatch(_ got: [Float], _ want: (Int) -> Double) -> String? {
            for i in got.indices where !close(got[i], want(i)) {
                return "element \(i): got \(got[i]), want \(want(i))"
            }
            return nil
        }

        mutating func allReduce(_ n: Int, _ op: ReduceOp) throws {
            var data = (0..<n).map { input(rank, $0) }
            try comm.allReduce(&data, op: op)
            let size = self.size
            let want: (Int) -> Double = { i in
                let values = (0..<size).map { Double(input($0, i)) }
                switch op {
                case .sum: return values.reduce(0, +)
                case .average: return values.reduce(0, +) / Double(size)
                case .max: return values.max()!
                case .min: return values.min()!
                }
            }
            try data.withUnsafeBytes {
                try record("allReduce \(op.rawValue) n=\(n)", local: Self.firstMismatch(data, want), result: $0)
            }
        }

        mutating func broadcast(_ n: Int, root: Int) throws {
            var data = (0..<n).map { rank == root ? input(root, $0) : -1 }
            try comm.broadcast(&data, root: root)
            try data.withUnsafeBytes {
                try record("broadcast root=\(root) n=\(n)", local: Self.firstMismatch(data) { Double(input(root, $0)) }, result: $0)
            }
        }

        mutating func allGather(perRank n: Int) throws {
            let gathered = try comm.allGather((0..<n).map { input(rank, $0) })
            let local = gathered.count == n * size ? Self.firstMismatch(gathered) { Double(input($0 / max(n, 1), $0 % max(n, 1))) } : "got \(gathered.count) floats"
            try gathered.withUnsafeBytes { try record("allGather n=\(n)/rank", local: local, result: $0) }
        }

        mutating func allGatherVariable() throws {
            let counts = (0..<size).map { ($0 * 3) % 5 }   // includes ranks that send nothing
            let mine = (0..<counts[rank]).map { input(rank, $0) }
            var out = [Float](repeating: .nan, count: counts.reduce(0, +))
            try mine.withUnsafeBytes { input in
                try out.withUnsafeMutableBytes { try comm.allGather(input, counts: counts.map { $0 * 4 }, into: $0) }
            }
            var want: [Double] = []
            for r in 0..<size { want += (0..<counts[r]).map { Double(input(r, $0)) } }
            try out.withUnsafeBytes { try record("allGatherV counts=\(counts)", local: Self.firstMismatch(out) { want[$0] }, result: $0) }
        }

        mutating func reduceScatter(block n: Int, _ op: ReduceOp) throws {
            let size = self.size, rank = self.rank
            let data = (0..<(n * size)).map { input(rank, $0) }
            var out = [Float](repeating: .nan, count: n)
            try data.withUnsafeBufferPointer { input in
                try out.withUnsafeMutableBufferPointer { try comm.reduceScatter(input, into: $0, op: op) }
            }
            let want: (Int) -> Double = { i in
                let s = (0..<size).map { Double(input($0, rank * n + i)) }.reduce(0, +)
                return op == .average ? s / Double(size) : s
            }
            // Each rank holds a different block: agreement is checked on the gathered whole.
            var whole = [Float](repeating: 0, count: n * size)
            try out.withUnsafeBytes { input in
                try whole.withUnsafeMutableBytes { try comm.allGather(input, counts: [Int](repeating: n * 4, count: size), into: $0) }
            }
            try whole.withUnsafeBytes { try record("reduceScatter \(op.rawValue) block=\(n)", local: Self.firstMismatch(out, want), result: $0) }
        }

        /// Value sent from rank `from` to rank `to`, element i.
        static func pairValue(_ from: Int, _ to: Int, _ i: Int) -> Float { Float(from * 1000 + to) + Float(i % 97) / 128 }

        mutating func allToAll(block n: Int) throws {
            let data = (0..<(n * size)).map { Self.pairValue(rank, $0 / max(n, 1), $0 % max(n, 1)) }
            var out = [Float](repeating: .nan, count: n * size)
            let counts = [Int](repeating: n * 4, count: size)
            try data.withUnsafeBytes { input in
                try out.withUnsafeMutableBytes { try comm.allToAll(input, sendCounts: counts, into: $0, receiveCounts: counts) }
            }
            let local = Self.firstMismatch(out) { Double(Self.pairValue($0 / max(n, 1), rank, $0 % max(n, 1))) }
            var whole = [Float](repeating: 0, count: n * size * size)
            try out.withUnsafeBytes { input in
                try whole.withUnsafeMutableBytes { try comm.allGather(input, counts: [Int](repeating: n * size * 4, count: size), into: $0) }
            }
            try whole.withUnsafeBytes { try record("allToAll block=\(n)", local: local, result: $0) }
        }

        mutating func allToAllVariable() throws {
            let count: (Int, Int) -> Int = { from, to in (from + 2 * to) % 4 }  // some pairs send nothing
            var data: [Float] = []
            for q in 0..<size { data += (0..<count(rank, q)).map { Self.pairValue(rank, q, $0) } }
            let receiveCounts = (0..<size).map { count($0, rank) }
            var out = [Float](repeating: .nan, count: receiveCounts.reduce(0, +))
            try data.withUnsafeBytes { input in
                try out.withUnsafeMutableBytes {
                    try comm.allToAll(input, sendCounts: (0..<size).map { count(rank, $0) * 4 }, into: $0, receiveCounts: receiveCounts.map { $0 * 4 })
                }
            }
            var want: [Double] = []
            for r in 0..<size { want += (0..<count(r, rank)).map { Double(Self.pairValue(r, rank, $0)) } }
            let local = out.count == want.count ? Self.firstMismatch(out) { want[$0] } : "got \(out.count) floats, want \(want.count)"
            let gathered = try comm.allGatherBytes(out.withUnsafeBytes { Array($0) })
            try gathered.flatMap { $0 }.withUnsafeBytes { try record("allToAllV", local: local, result: $0) }
        }

        /// Ring exchange with two tags sent in the opposite order from the one they are received in.
        mutating func sendReceive(_ n: Int) throws {
            let next = (rank + 1) % size, previous = (rank + size - 1) % size
            let first = (0..<n).map { Self.pairValue(rank, next, $0) }
            let second = (0..<min(n, 5)).map { -Self.pairValue(rank, next, $0) }
            try second.withUnsafeBytes { try comm.send($0, to: next, tag: 9) }
            try first.withUnsafeBytes { try comm.send($0, to: next, tag: 5) }
            var gotFirst = [Float](repeating: .nan, count: n)
            var gotSecond = [Float](repeating: .nan, count: min(n, 5))
            try gotFirst.withUnsafeMutableBytes { try comm.receive($0, from: previous, tag: 5) }
            try gotSecond.withUnsafeMutableBytes { try comm.receive($0, from: previous, tag: 9) }
            let local = Self.firstMismatch(gotFirst) { Double(Self.pairValue(previous, self.rank, $0)) }
                ?? Self.firstMismatch(gotSecond) { -Double(Self.pairValue(previous, self.rank, $0)) }
            // Every rank received something different; agreement is on the local verdicts.
            try record("send/receive ring n=\(n)", local: local, result: nil)
        }

        mutating func barrier() throws {
            for _ in 0..<3 { try comm.barrier() }
            try record("barrier x3", local: nil, result: nil)
        }

        mutating func split() throws {
            let color = rank % 2
            let sub = try comm.split(color: color, key: -rank)   // reversed order within each colour
            let members = (0..<size).filter { $0 % 2 == color }.reversed()
            var local: String?
            if sub.size != members.count { local = "sub-group size \(sub.size), want \(members.count)" }
            else if sub.rank != Array(members).firstIndex(of: rank)! { local = "sub-group rank \(sub.rank), want \(Array(members).firstIndex(of: rank)!)" }
            var value = [Float(rank)]
            try sub.allReduce(&value, op: .sum)
            let want = Float(members.reduce(0, +))
            if local == nil, value[0] != want { local = "sub-group sum \(value[0]), want \(want)" }
            try sub.barrier()
            try record("split(color: rank % 2, key: -rank)", local: local, result: nil)
        }
    }
}
