import Testing
import Kernels
import _TestSupport

/// `tessera selftest kernels` (`KernelSelfTest`), which the release binary runs: every
/// comparison passes in this build too, on one and on two threads, and its error measure fails
/// what it must (a NaN, an infinity on one side, a difference above the tolerance).
@Suite struct KernelSelfTestTests {
    @Test(arguments: [1, 2])
    func everyFastKernelMatchesItsTwinInThisBuild(threads: Int) {
        let outcomes = KernelSelfTest.run(threads: KernelThreads(threads))
        #expect(outcomes.count >= 40)
        for outcome in outcomes where !outcome.passed { Issue.record("\(outcome)") }
    }

    @Test func theErrorMeasureFailsNaNInfinityAndDifferences() {
        #expect(KernelSelfTest.error([1, 2, 3] as [Float], [1, 2, 3] as [Double]) == 0)
        #expect(KernelSelfTest.error([1, .nan] as [Float], [1, 2] as [Double]) == .infinity)
        #expect(KernelSelfTest.error([1, .infinity] as [Float], [1, 2] as [Double]) == .infinity)
        #expect(KernelSelfTest.error([-.infinity] as [Float], [-.infinity] as [Double]) == 0)
        #expect(KernelSelfTest.error([1] as [Float], [1, 2] as [Double]) == .infinity)
        #expect(abs(KernelSelfTest.error([10.001] as [Float], [10] as [Double]) - 1e-4) < 1e-6)
        #expect(!SelfTestOutcome(name: "nan", error: .nan, tolerance: 1e-5).passed)
        #expect(!SelfTestOutcome(name: "above", error: 2e-5, tolerance: 1e-5).passed)
        #expect(SelfTestOutcome(name: "within", error: 1e-5, tolerance: 1e-5).passed)
    }
}
