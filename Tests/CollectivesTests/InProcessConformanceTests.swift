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

    @Test func gridRejectsALayoutThatDoesNotDivide() {
        let error = #expect(throws: CollectiveError.self) { try ProcessGrid(world: SingleProcessCommunicator(), data: 2, sequence: 1) }
        #expect("\(error!)".contains("data=2") && "\(error!)".contains("1 ranks"))
    }
}
