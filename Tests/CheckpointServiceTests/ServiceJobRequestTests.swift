@testable import CheckpointService
import Checkpointing
import Foundation
import Testing
import _TestSupport

/// Job requests to the checkpoint service: the wire form, outputs per kind, inputs resolved.
@Suite struct ServiceJobRequestTests {
    @Test func aSoupRequestOfAnEarlierClientStillDecodesAndADistillRequestRoundTrips() throws {
        let earlier = #"{"kind":"soup","method":"greedy","inputs":["8"],"weights":[],"validationBatches":2,"output":"s"}"#
        let soup = try JSONDecoder().decode(ServiceJobRequest.self, from: Data(earlier.utf8))
        #expect(soup.config == nil && soup.overrides == nil && soup.outputFolder == "soups")
        let distill = ServiceJobRequest(kind: "distill", method: "mohawk", inputs: ["runs/tiny"], output: "student",
                                        config: "distill:\n  stage1_steps: 3\n", overrides: ["distill.stage3_steps=2"])
        #expect(try JSONDecoder().decode(ServiceJobRequest.self, from: JSONEncoder().encode(distill)) == distill)
        let root = URL(fileURLWithPath: "/srv/ckpt")
        #expect(try distill.outputDirectory(root: root).path == "/srv/ckpt/distills/student")
        #expect(try soup.outputDirectory(root: root).path == "/srv/ckpt/soups/s")
        var escaping = distill
        escaping.output = "../student"
        #expect(throws: CheckpointError.self) { try escaping.outputDirectory(root: root) }
    }

    @Test func anInputIsAStepTheServiceHoldsACheckpointOrARunDirectory() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let root = URL(fileURLWithPath: directory.path)
        let run = root.appendingPathComponent("run/checkpoints")
        for step in [root.appendingPathComponent("step-00000008"), run.appendingPathComponent("step-00000004"),
                     run.appendingPathComponent("step-00000006")] {
            try FileManager.default.createDirectory(at: step, withIntermediateDirectories: true)
            try Data().write(to: step.appendingPathComponent(CheckpointLayout.done))
        }
        try FileManager.default.createDirectory(at: run.appendingPathComponent("step-00000009"), withIntermediateDirectories: true)
        let request = ServiceJobRequest(kind: "distill", method: "mohawk", inputs: [], output: "x")
        #expect(try request.resolve("8", root: root).lastPathComponent == "step-00000008")
        #expect(try request.resolve("step-00000008", root: root).lastPathComponent == "step-00000008")
        #expect(try request.resolve(root.appendingPathComponent("run").path, root: root).lastPathComponent == "step-00000006",
                "a run directory: its newest complete checkpoint (step 9 has no DONE)")
        #expect(throws: CheckpointError.self) { try request.resolve("7", root: root) }
    }
}
