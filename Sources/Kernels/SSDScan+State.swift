import Foundation

/// The scan continued from a given state, as the pieces a sequence split over ranks needs: each
/// piece is scanned from a zero state (`forward` with `finalStates`), the pieces' (total decay,
/// final state) pairs are combined in sequence order into each piece's incoming state, and the
/// incoming state's share is added afterwards — exact, as the scan is linear in its state:
///
///     y = y₀ + exp(cs_t) C_tᵀ S_in,   S_out = exp(Σ log a) S_in + F₀     (cs from the piece's start).
///
/// Backward mirrors it: `backward` with `dInitialStates` gives ∂L/∂S_in from the piece's own
/// outputs, the pieces' gradients are combined in reverse order into ∂L/∂S_out of each piece,
/// and `addFinalStateGradient` adds what flows through S_out into x, B and A_log.
extension SSDScan {
    /// decays (B, H) = Σ_t log a_t over each sample's positions, in Float64.
    public func totalLogDecay(aLog: StridedRows, into decays: UnsafeMutablePointer<Float>) {
        for sample in 0..<batch {
            for h in 0..<heads {
                var sum = 0.0
                for t in 0..<length { sum += Double(Self.logDecay(aLog.row(sample * length + t)[h])) }
                decays[sample * heads + h] = Float(sum)
            }
        }
    }

    /// Turns a `forward` from zero states into one from `initialStates` (B, H, N, P): adds the
    /// initial state's read-out to y and its decayed share to every chunk's entering state in
    /// `chunkStates` (so the first chunk's is the initial state, as `backward` with
    /// `dInitialStates` expects). The final state is exp(Σ log a) · initial + the zero-start one.
    public func addInitialStates(c: StridedRows, aLog: StridedRows, initialStates: UnsafePointer<Float>,
                                 y: UnsafeMutablePointer<Float>, chunkStates: UnsafeMutablePointer<Float>,
                                 threads: KernelThreads = .single) {
        let size = stateSize * headDim
        forEachItem(threads: threads) { sample, h, work in
            let state = work.state
            state.update(from: initialStates + (sample * heads + h) * size, count: size)
            for chunk in 0..<chunks {
                let t0 = chunk * chunkSize, L = min(chunkSize, length - t0), row0 = sample * length + t0
                let entering = chunkStates + chunkStateOffset(sample, h, chunk)
                for i in 0..<size { entering[i] += state[i] }
                cumulativeLogDecay(aLog, row0: row0, count: L, head: h, into: work.cumulative)
                addStateReadout(row0: row0, count: L, head: h, c: c, state: state, y: y, work: work)
                let carry = exp(work.cumulative[L - 1])
                for i in 0..<size { state[i] *= carry }
            }
        }
    }

    /// Adds to dx, dB and dA_log what flows from dFinalStates (B, H, N, P) = ∂L/∂(the states
    /// after the last position), `chunkStates` being the entering states of the forward pass
    /// (from `addInitialStates` when the scan started from a state: its decay gets gradient too).
    public func addFinalStateGradient(x: StridedRows, b: StridedRows, aLog: StridedRows, chunkStates: UnsafePointer<Float>,
                                      dFinalStates: UnsafePointer<Float>, dx: MutableStridedRows, dB: MutableStridedRows,
                                      dALog: MutableStridedRows, threads: KernelThreads = .single) {
        let size = stateSize * headDim
        forEachItem(threads: threads) { sample, h, work in
            let dState = work.dState
            dState.update(from: dFinalStates + (sample * heads + h) * size, count: size)
            for chunk in (0..<chunks).reversed() {
                let t0 = chunk * chunkSize, L = min(chunkSize, length - t0), row0 = sample * length + t0
                cumulativeLogDecay(aLog, row0: row0, count: L, head: h, into: work.cumulative)
                work.dCumulative.update(repeating: 0, count: L)
                addStateLeavingGradient(row0: row0, count: L, head: h, x: x, b: b, dx: dx, dB: dB, dState: dState,
                                        previous: chunkStates + chunkStateOffset(sample, h, chunk), work: work)
                logDecayGradient(row0: row0, count: L, head: h, aLog: aLog, dALog: dALog, adding: true, work: work)
                let carry = exp(work.cumulative[L - 1])
                for i in 0..<size { dState[i] *= carry }
            }
        }
    }
}
