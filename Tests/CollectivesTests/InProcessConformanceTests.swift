import Testing
import Collectives
import _TestSupport

@Suite struct InProcessConformanceTests {
    @Test(arguments: [1, 2, 3, 4])
    func conformance(ranks: Int) throws {
        let results = InProcessCommunicator.run(size: ranks) { comm in
            try CommunicatorConformance.run(comm)
        }
        for result in results {
            let outcomes = try result.get()
            #expect(outcomes.count > 40)
            for outcome in outcomes { #expect(outcome.passed, "\(outcome)") }
        }
    }

    @Test func singleProcessPassesTheSameSuite() throws {
        let outcomes = try CommunicatorConformance.run(SingleProcessCommunicator())
        #expect(outcomes.allSatisfy { $0.passed }, "\(outcomes.filter { !$0.passed })")
    }

    @Test func aMissingRankIsNamedWithinTheDeadline() throws {
        let start = ContinuousClock.now
        let results = InProcessCommunicator.run(size: 3, timeoutSeconds: 0.5) { comm -> Void in
            if comm.rank == 2 { return }    // rank 2 never joins
            var data: [Float] = [1, 2, 3]
            try comm.allReduce(&data, op: .sum)
        }
        #expect(ContinuousClock.now - start < .seconds(5))
        for r in 0..<2 {
            #expect(throws: CollectiveError.timeout(operation: "allReduce(sum, 3 floats)", waitingFor: [2], seconds: 0.5)) {
                try results[r].get()
            }
        }
        let message = "\(CollectiveError.timeout(operation: "allReduce(sum, 3 floats)", waitingFor: [2], seconds: 0.5))"
        #expect(message.contains("rank 2"))
    }

    @Test func gridSplitsDataAndSequenceAxes() throws {
        let results = InProcessCommunicator.run(size: 6) { comm -> [Int] in
            let grid = try ProcessGrid(world: comm, data: 3, sequence: 2)
            var probe = [Float(comm.rank)]
            try grid.data.allReduce(&probe, op: .sum)
            return [grid.dataIndex, grid.sequenceIndex, grid.data.size, grid.sequence.size, grid.data.rank, grid.sequence.rank, Int(probe[0])]
        }
        for (rank, result) in results.enumerated() {
            let v = try result.get()
            // data group of rank r: ranks with the same r % 2, i.e. {0,2,4} or {1,3,5}
            #expect(v == [rank / 2, rank % 2, 3, 2, rank / 2, rank % 2, rank % 2 == 0 ? 6 : 9])
        }
    }

    /// The members of each rank's group along every axis, found by summing one-hot vectors.
    static func members(size: Int, layout: GridLayout) throws -> [[String: [Int]]] {
        try InProcessCommunicator.run(size: size) { comm -> [String: [Int]] in
            let grid = try ProcessGrid(world: comm, layout: layout)
            func group(_ c: Communicator) throws -> [Int] {
                var oneHot = [Float](repeating: 0, count: size)
                oneHot[comm.rank] = 1
                try c.allReduce(&oneHot, op: .sum)
                return oneHot.indices.filter { oneHot[$0] == 1 }
            }
            var out: [String: [Int]] = [:]
            for axis in GridAxis.allCases {
                out["\(axis)"] = try group(grid.communicator(for: axis))
                out["replicas of \(axis) shards"] = try group(grid.replicas(ofShardsAlong: axis))
                #expect(grid.communicator(for: axis).size == grid.size(of: axis))
            }
            out["replicated"] = try group(grid.replicas(ofShardsAlong: nil))
            return out
        }.map { try $0.get() }
    }

    /// data 4 (two expert groups of 2) × sequence 2 over 8 ranks: rank = data × 2 + sequence,
    /// data = replica × 2 + expert.
    @Test func gridCarvesTheExpertAxisFromTheDataAxis() throws {
        let groups = try Self.members(size: 8, layout: GridLayout(data: 4, sequence: 2, expert: 2))
        for (rank, g) in groups.enumerated() {
            let (data, sequence) = (rank / 2, rank % 2)
            let (replica, expert) = (data / 2, data % 2)
            #expect(g["data"] == (0..<4).map { $0 * 2 + sequence })
            #expect(g["sequence"] == [data * 2, data * 2 + 1])
            #expect(g["expert"] == (0..<2).map { (replica * 2 + $0) * 2 + sequence })
            // An expert shard is held by every rank with the same expert index.
            #expect(g["replicas of expert shards"] == (0..<8).filter { ($0 / 2) % 2 == expert })
            #expect(g["replicas of sequence shards"] == g["data"] && g["replicas of data shards"] == g["sequence"])
            #expect(g["replicated"] == Array(0..<8))
        }
    }

    @Test func gridWithThreeRanksAndNoExperts() throws {
        let groups = try Self.members(size: 3, layout: GridLayout(data: 3))
        for g in groups {
            #expect(g["data"] == [0, 1, 2] && g["expert"]?.count == 1 && g["sequence"]?.count == 1)
            #expect(g["replicas of expert shards"] == [0, 1, 2])
        }
    }

    @Test func gridRejectsALayoutThatDoesNotDivideNamingEveryNumber() {
        let error = #expect(throws: CollectiveError.self) {
            try ProcessGrid(world: SingleProcessCommunicator(), layout: GridLayout(data: 3, sequence: 2, expert: 2))
        }
        let message = "\(error!)"
        #expect(message.contains("parallel.data = 3 × parallel.sequence = 2 = 6 does not match the 1 ranks started"), "\(message)")
        #expect(message.contains("parallel.expert = 2 does not divide parallel.data = 3"), "\(message)")
    }
}
