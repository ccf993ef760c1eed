import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Rank 0's view of a run: a live progress bar when standard output is a terminal, plain
/// lines otherwise (logs, CI, `tee`).
public final class ProgressReporter {
    let interactive: Bool
    let output: FileHandle
    /// Where lines go instead of `output` (a service job's log).
    let collect: ((String) -> Void)?
    var started = Date()
    var firstStep = 0
    var tokensPerStep = 0
    var barShown = false
    /// Once this returns true (a stop was requested), a line that cannot be written at once is
    /// dropped: a reader that has stopped reading must not keep the run from its stop checkpoint.
    /// `Trainer.run` sets it to the trainer's `stopRequested`.
    public var stopRequested: (() -> Bool)?

    public init(output: FileHandle = .standardOutput, interactive: Bool? = nil) {
        self.output = output
        self.interactive = interactive ?? (isatty(output.fileDescriptor) != 0)
        collect = nil
    }

    /// A reporter that hands each line (without its newline) to `collect`.
    public init(collect: @escaping (String) -> Void) {
        (output, interactive, self.collect) = (.standardOutput, false, collect)
    }

    func emit(_ text: String, newline: Bool = true) {
        if let collect { collect(text); return }
        write((interactive && barShown ? "\r\u{1B}[2K" : "") + text + (newline ? "\n" : ""))
        barShown = !newline
    }

    /// Writes a line, giving it up when the reader has gone, or when the output would block
    /// and a stop has been requested (a progress line is not worth blocking a stopping run for).
    /// Before a stop request a full pipe is waited for (in slices, re-checking for a request:
    /// being interrupted by the signal is not enough, as the next line would block again).
    private func write(_ text: String) {
        var bytes = Array(text.utf8)[...]
        let fd = output.fileDescriptor
        while !bytes.isEmpty {
            var target = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let stopping = stopRequested?() ?? false
            let ready = poll(&target, 1, stopping ? 0 : 100)
            if ready < 0 && errno != EINTR { return }
            if ready <= 0 {   // not writable yet (or interrupted)
                if stopping { return }
                continue
            }
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            guard written > 0 else { return }
            bytes = bytes.dropFirst(written)
        }
    }

    public func note(_ text: String) { emit(text) }

    func start(step: Int, total: Int, tokensPerStep: Int, ranks: Int) {
        started = Date()
        firstStep = step
        self.tokensPerStep = tokensPerStep
        emit("training steps \(step)→\(total), \(tokensPerStep) tokens per step, \(ranks) rank\(ranks == 1 ? "" : "s")")
    }

    func progress(step: Int, total: Int, loss: Double, learningRate: Double, tokensPerSecond: Double) {
        let elapsed = Date().timeIntervalSince(started)
        let done = step - firstStep
        let eta = done > 0 ? elapsed / Double(done) * Double(total - step) : 0
        let fields = String(format: "step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | eta %@",
                            step, total, loss, learningRate, tokensPerSecond, Self.duration(eta))
        if interactive {
            let width = 24, filled = Int(Double(width) * Double(step) / Double(max(total, 1)))
            emit("[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] " + fields, newline: step == total)
        } else {
            emit(fields)
        }
    }

    func validation(step: Int, loss: Double) {
        emit(String(format: "step %d | validation loss %.4f nats/byte (%.3f bits/byte)", step, loss, loss / log(2)))
    }

    func finish(_ summary: RunSummary) {
        emit(String(format: "done: %d steps (to step %d) in %@, %.0f tok/s, final train loss %.4f, validation loss %.4f nats/byte",
                    summary.steps, summary.finalStep, Self.duration(summary.seconds), summary.tokensPerSecond, summary.finalTrainLoss, summary.finalValidationLoss))
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 60 ? "\(s / 60)m\(String(format: "%02d", s % 60))s" : "\(s)s"
    }
}
