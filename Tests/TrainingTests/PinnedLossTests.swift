import Testing
import Collectives
import Foundation
import Kernels
import Training
import _TestSupport

/// The pinned run (`PinnedRun`: ten steps of a tiny model, its losses and gradient norms pinned
/// to what the code produced before the model reshape, commit 189ab09) in the debug build;
/// `tessera selftest pinned` checks the same pins in the release binary, and scripts/test.sh
/// runs this suite under two OpenBLAS cores.
///
/// The first pin is the materialised attention kernel's (`attention.kernel=naive`, the
/// kernel of 189ab09); the second the flash kernel's (the default), checked to agree with the
/// first to 1e-5 and pinned when it was introduced.
@Suite struct PinnedLossTests {
    /// Ten steps of the tiny model with the given attention kernel: losses and gradient norms.
    func run(kernel: String) throws -> (losses: [Double], norms: [Double]) {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        return try PinnedRun.run(kernel: kernel, in: directory.path)
    }

    @Test func tenStepsOfASmallModelGiveThePinnedLossesAndGradientNorms() throws {
        let (losses, norms) = try run(kernel: "naive")
        #expect(maxRelativeError(losses, PinnedRun.losses) < PinnedRun.tolerance, "losses \(losses)")
        #expect(maxRelativeError(norms, PinnedRun.gradientNorms) < PinnedRun.tolerance, "gradient norms \(norms)")
    }

    @Test func withFlashAttentionTenStepsGiveTheirPinnedLossesWithin1e5OfNaive() throws {
        let (losses, norms) = try run(kernel: "flash")
        #expect(maxRelativeError(losses, PinnedRun.losses) < PinnedRun.flashToNaiveTolerance
                && maxRelativeError(norms, PinnedRun.gradientNorms) < PinnedRun.flashToNaiveTolerance)
        #expect(maxRelativeError(losses, PinnedRun.flashLosses) < PinnedRun.tolerance, "losses \(losses)")
        #expect(maxRelativeError(norms, PinnedRun.flashGradientNorms) < PinnedRun.tolerance, "gradient norms \(norms)")
    }

    /// What `tessera selftest pinned` reports: six comparisons, all passing in this build, and
    /// a pin moved by 1e-5 (a change of the model's numbers) is a failure it reports.
    @Test func theSelfTestPassesHereAndFailsOnAMovedPin() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let outcomes = try PinnedRun.check(scratch: directory.url)
        #expect(outcomes.count == 6 && outcomes.allSatisfy(\.passed), "\(outcomes)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty, "the self-test left its run behind")
        let moved = PinnedRun.losses.map { $0 * (1 + 1e-5) }
        let (losses, _) = try run(kernel: "naive")
        #expect(PinnedRun.compare("losses", losses, PinnedRun.losses, PinnedRun.tolerance).passed)
        #expect(!PinnedRun.compare("losses against moved pins", losses, moved, PinnedRun.tolerance).passed)
        #expect(!PinnedRun.compare("a NaN loss", [.nan] + losses.dropFirst(), PinnedRun.losses, PinnedRun.tolerance).passed)
    }
}
