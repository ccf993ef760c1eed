import CMPI
import Collectives
import Foundation

/// OpenMPI behind the `Communicator` protocol.
///
/// Collectives are OpenMPI's blocking calls, its fastest path (the non-blocking `MPI_I...`
/// collectives run other algorithms, about half as fast for large buffers here). MPI cannot
/// cancel a collective, so their deadline is kept by a watchdog thread: a collective still
/// running at its deadline is reported to the world's `onDeadline` handler, which ends the job with that
/// one line (MPI cannot say which rank is missing; a rank that *dies* is reported by `mpirun`,
/// which stops the job). Point-to-point calls are non-blocking and polled against the
/// deadline, so they throw `CollectiveError.timeout` naming the peer.
/// MPI is initialised with `MPI_THREAD_SERIALIZED`: any thread may call, one at a time per
/// process, which the protocol's threading contract already requires.
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    public let backendName = "mpi"
    public let timeoutSeconds: Double
    private var comm: MPI_Comm
    /// Shared by the world and every communicator split from it.
    private let watchdog: DeadlineWatchdog

    /// The default deadline handler: prints the error and aborts the MPI job.
    public static let reportAndAbort: @Sendable (CollectiveError) -> Void = { error in
        try? FileHandle.standardError.write(contentsOf: Data("tessera: error: \(error)\n".utf8))
        abortJob(code: 1)
    }

    /// Runs a blocking collective under the deadline.
    private func blocking(_ operation: @autoclosure () -> String, _ call: () -> Int32) throws {
        let status = watchdog.guarded(operation(), seconds: timeoutSeconds, call)
        guard status == tessera_mpi_success() else { throw error(status, operation()) }
    }

    /// True when this process was started by `mpirun`/`srun --mpi=pmix` (OpenMPI or PMIx env).
    public static var launchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil
    }

    /// Initialises MPI (once per process) and returns the world communicator. `onDeadline` is
    /// called on a watchdog thread when a blocking collective of this world (or of a
    /// communicator split from it) passes its deadline; it must end the process.
    public static func world(timeoutSeconds: Double,
                             onDeadline: @escaping (CollectiveError) -> Void = reportAndAbort) throws -> MPICommunicator {
        var initialised: Int32 = 0
        MPI_Initialized(&initialised)
        if initialised == 0 {
            var provided: Int32 = 0
            let status = MPI_Init_thread(nil, nil, tessera_mpi_thread_serialized(), &provided)
            guard status == tessera_mpi_success() else {
                throw CollectiveError.backend("MPI_Init_thread failed with code \(status); was this started by mpirun?")
            }
            guard provided >= tessera_mpi_thread_serialized() else {
                throw CollectiveError.backend("this MPI library gives thread level \(provided), Tessera needs MPI_THREAD_SERIALIZED")
            }
            atexit { MPICommunicator.finalizeIfNeeded() }
        }
        MPI_Comm_set_errhandler(tessera_mpi_comm_world(), tessera_mpi_errors_return())
        return MPICommunicator(comm: tessera_mpi_comm_world(), timeoutSeconds: timeoutSeconds,
                               watchdog: DeadlineWatchdog(onExpiry: onDeadline))
    }

    /// Stops every rank of the job (used by the executable after reporting a fatal error, so
    /// the other ranks do not wait for this one until their deadline).
    public static func abortJob(code: Int32) {
        var initialised: Int32 = 0, finalised: Int32 = 0
        MPI_Initialized(&initialised)
        MPI_Finalized(&finalised)
        if initialised != 0, finalised == 0 { MPI_Abort(tessera_mpi_comm_world(), code) }
    }

    private static func finalizeIfNeeded() {
        var finalised: Int32 = 0
        MPI_Finalized(&finalised)
        if finalised == 0 { MPI_Finalize() }
    }

    init(comm: MPI_Comm, timeoutSeconds: Double, watchdog: DeadlineWatchdog) {
        self.comm = comm
        self.watchdog = watchdog
        self.timeoutSeconds = timeoutSeconds
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(comm, &r)
        MPI_Comm_size(comm, &s)
        rank = Int(r)
        size = Int(s)
    }

    // MARK: Completion with a deadline

    /// Polls `request` until it completes; throws when the deadline passes.
    private func complete(_ request: inout MPI_Request?, _ operation: String, peer: Int? = nil) throws {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutSeconds * 1e9)
        var done: Int32 = 0
        var polls = 0
        while true {
            let status = MPI_Test(&request, &done, tessera_mpi_status_ignore())
            guard status == tessera_mpi_success() else { throw error(status, operation) }
            if done != 0 { return }
            polls += 1
            // Spin briefly (lowest latency), then yield the core to the other ranks.
            if polls > 2000 { sched_yield() }
            if polls % 256 == 0, DispatchTime.now().uptimeNanoseconds > deadline {
                throw CollectiveError.timeout(operation: operation, waitingFor: peer.map { [$0] } ?? [], seconds: timeoutSeconds)
            }
        }
    }

    private func error(_ code: Int32, _ operation: String) -> CollectiveError {
        var text = [CChar](repeating: 0, count: 512)
        var length: Int32 = 0
        MPI_Error_string(code, &text, &length)
        return .backend("\(operation) failed in MPI on rank \(rank): \(String(cString: text))")
    }

    private func call(_ operation: String, peer: Int? = nil, _ start: (inout MPI_Request?) -> Int32) throws {
        var request: MPI_Request? = tessera_mpi_request_null()
        let status = start(&request)
        guard status == tessera_mpi_success() else { throw error(status, operation) }
        try complete(&request, operation, peer: peer)
    }

    private func int32(_ value: Int, _ operation: String) throws -> Int32 {
        guard let v = Int32(exactly: value) else {
            throw CollectiveError.invalidArgument("\(operation): \(value) elements exceed MPI's 32-bit count; split the buffer")
        }
        return v
    }

    private static func mpiOp(_ op: ReduceOp) -> MPI_Op {
        switch op {
        case .sum, .average: return tessera_mpi_sum()
        case .max: return tessera_mpi_max()
        case .min: return tessera_mpi_min()
        }
    }

    private static func displacements(_ counts: [Int]) -> [Int32] {
        var offset = 0
        return counts.map { c in defer { offset += c }; return Int32(offset) }
    }

    // MARK: Communicator

    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws {
        guard buffer.count > 0 else { return }
        let n = try int32(buffer.count, "allReduce")
        try blocking("allReduce(\(op.rawValue), \(buffer.count) floats)") {
            MPI_Allreduce(tessera_mpi_in_place(), buffer.baseAddress, n, tessera_mpi_float(), Self.mpiOp(op), comm)
        }
        op.finish(buffer.baseAddress!, count: buffer.count, size: size)
    }

    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        try checkPeer(root, "broadcast")
        guard buffer.count > 0 else { return }
        let n = try int32(buffer.count, "broadcast")
        try blocking("broadcast(root: \(root))") { MPI_Bcast(buffer.baseAddress, n, tessera_mpi_byte(), Int32(root), comm) }
    }

    public func allGather(_ input: UnsafeRawBufferPointer, counts: [Int], into output: UnsafeMutableRawBufferPointer) throws {
        try checkAllGather(input, counts: counts, output)
        let counts32 = try counts.map { try int32($0, "allGather") }
        let displacements = Self.displacements(counts)
        // MPI rejects a null buffer even for zero counts; point empty buffers at a dummy byte.
        var dummy: UInt8 = 0
        try withUnsafeMutablePointer(to: &dummy) { dummyPointer in
            let send = input.baseAddress ?? UnsafeRawPointer(dummyPointer)
            let receive = output.baseAddress ?? UnsafeMutableRawPointer(dummyPointer)
            try blocking("allGather") {
                MPI_Allgatherv(send, counts32[rank], tessera_mpi_byte(), receive, counts32, displacements, tessera_mpi_byte(), comm)
            }
        }
    }

    public func reduceScatter(_ input: UnsafeBufferPointer<Float>, into output: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws {
        try checkReduceScatter(input, output)
        guard output.count > 0 else { return }
        let n = try int32(output.count, "reduceScatter")
        try blocking("reduceScatter(\(op.rawValue))") {
            MPI_Reduce_scatter_block(input.baseAddress, output.baseAddress, n, tessera_mpi_float(), Self.mpiOp(op), comm)
        }
        op.finish(output.baseAddress!, count: output.count, size: size)
    }

    public func allToAll(_ input: UnsafeRawBufferPointer, sendCounts: [Int],
                         into output: UnsafeMutableRawBufferPointer, receiveCounts: [Int]) throws {
        try checkAllToAll(input, sendCounts: sendCounts, output, receiveCounts: receiveCounts)
        let send32 = try sendCounts.map { try int32($0, "allToAll") }
        let receive32 = try receiveCounts.map { try int32($0, "allToAll") }
        let sendDisplacements = Self.displacements(sendCounts), receiveDisplacements = Self.displacements(receiveCounts)
        var dummy: UInt8 = 0
        try withUnsafeMutablePointer(to: &dummy) { dummyPointer in
            let send = input.baseAddress ?? UnsafeRawPointer(dummyPointer)
            let receive = output.baseAddress ?? UnsafeMutableRawPointer(dummyPointer)
            try blocking("allToAll") {
                MPI_Alltoallv(send, send32, sendDisplacements, tessera_mpi_byte(),
                              receive, receive32, receiveDisplacements, tessera_mpi_byte(), comm)
            }
        }
    }

    /// Sends complete in the background: the bytes are copied first, so `send` returns at once
    /// (like the other backends) and ranks that all send before they receive cannot deadlock.
    /// Outstanding sends are completed, with the deadline, by later calls and by `barrier`.
    public func send(_ buffer: UnsafeRawBufferPointer, to destination: Int, tag: Int) throws {
        try checkPeer(destination, "send")
        let n = try int32(buffer.count, "send")
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, buffer.count), alignment: 16)
        if buffer.count > 0 { copy.copyMemory(from: buffer) }
        var request: MPI_Request? = tessera_mpi_request_null()
        let status = MPI_Isend(copy.baseAddress, n, tessera_mpi_byte(), Int32(destination), Int32(tag), comm, &request)
        guard status == tessera_mpi_success() else { copy.deallocate(); throw error(status, "send(to: \(destination), tag: \(tag))") }
        pendingSends.append(PendingSend(request: request, buffer: copy, destination: destination, tag: tag))
        try reapSends(waiting: false)
    }

    private struct PendingSend {
        var request: MPI_Request?
        var buffer: UnsafeMutableRawBufferPointer
        var destination: Int
        var tag: Int
    }
    private var pendingSends: [PendingSend] = []

    /// Frees completed background sends; with `waiting`, completes all of them (with deadline).
    private func reapSends(waiting: Bool) throws {
        var index = 0
        while index < pendingSends.count {
            var done: Int32 = 0
            if waiting {
                try complete(&pendingSends[index].request, "send(to: \(pendingSends[index].destination), tag: \(pendingSends[index].tag))",
                             peer: pendingSends[index].destination)
                done = 1
            } else {
                MPI_Test(&pendingSends[index].request, &done, tessera_mpi_status_ignore())
            }
            if done != 0 {
                pendingSends[index].buffer.deallocate()
                pendingSends.remove(at: index)
            } else {
                index += 1
            }
        }
    }

    public func receive(_ buffer: UnsafeMutableRawBufferPointer, from source: Int, tag: Int) throws {
        try checkPeer(source, "receive")
        let n = try int32(buffer.count, "receive")
        var dummy: UInt8 = 0
        try withUnsafeMutablePointer(to: &dummy) { dummyPointer in
            try call("receive(from: \(source), tag: \(tag))", peer: source) {
                MPI_Irecv(buffer.baseAddress ?? UnsafeMutableRawPointer(dummyPointer), n, tessera_mpi_byte(), Int32(source), Int32(tag), comm, &$0)
            }
        }
    }

    public func barrier() throws {
        try reapSends(waiting: true)
        try blocking("barrier") { MPI_Barrier(comm) }
    }

    public func split(color: Int, key: Int) throws -> Communicator {
        var child: MPI_Comm? = tessera_mpi_comm_null()
        try blocking("split(color: \(color), key: \(key))") { MPI_Comm_split(comm, Int32(color), Int32(key), &child) }
        MPI_Comm_set_errhandler(child, tessera_mpi_errors_return())
        return MPICommunicator(comm: child!, timeoutSeconds: timeoutSeconds, watchdog: watchdog)
    }

    /// A bare blocking `MPI_Allreduce` (sum, in place): the bench's baseline for this backend.
    public func blockingAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) {
        MPI_Allreduce(tessera_mpi_in_place(), buffer.baseAddress, Int32(buffer.count), tessera_mpi_float(), tessera_mpi_sum(), comm)
    }
}
