import Testing
import Collectives
import Training
import _TestSupport

/// Pins a short run's numbers to what the code produced before the model reshape (commit
/// 189ab09), so a change that moves numbers is seen. Equality is exact: the same kernels
/// in the same order give the same bits. If a change moves these on purpose (a new kernel,
/// another summation order), say so in its commit and re-pin.
@Suite struct PinnedLossTests {
    static let losses: [Double] = [
        5.542783101399739, 5.5166810353597, 5.493261337280273, 5.432637532552083, 5.366668065388997,
        5.3011124928792315, 5.231283823649089, 5.207825660705566, 5.167113304138184, 5.154789924621582]
    static let gradientNorms: [Double] = [
        0.8371468579671353, 0.9609782231626144, 0.8695339834336522, 1.0368986687996848, 0.9642710144146782,
        1.0643167285849748, 1.0831560320681866, 1.0997750342139256, 1.1168369696972833, 1.052738610791689]

    @Test func tenStepsOfASmallModelGiveThePinnedLossesAndGradientNorms() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 10))
        let trainer = try Trainer(config: config, world: SingleProcessCommunicator())
        var losses: [Double] = [], norms: [Double] = []
        for _ in 0..<10 {
            losses.append(try trainer.trainStep())
            norms.append(trainer.lastGradientNorm)
        }
        #expect(losses == Self.losses)
        #expect(norms == Self.gradientNorms)
    }
}
