import ArgumentParser
import CheckpointService
import Checkpointing
import Foundation
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// What sealing costs the service path, measured without a switch that could turn sealing off
/// in the product: the bytes of the committed checkpoint are sealed and opened in
/// `Frame.chunkBytes` records by the same `SessionSeal` the service channel uses, in this
/// thread. The service line then carries `unsealed_bound`: its MB/s with that time taken away
/// (an upper bound on an unsealed service: on the service path the client seals and the service
/// opens on two threads, which may overlap).
extension CheckpointBench {
    /// Seconds to seal and open every byte of the files in `directory`, once per run.
    static func timeSealing(_ directory: URL, runs: Int) throws -> [Double] {
        let (client, service) = try sealPair()
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
            .map { try Data(contentsOf: directory.appendingPathComponent($0)) }
        var opened = [UInt8](repeating: 0, count: Frame.chunkBytes)
        var seconds: [Double] = []
        for _ in 0..<runs {
            let start = DispatchTime.now().uptimeNanoseconds
            for data in files {
                try data.withUnsafeBytes { raw in
                    var offset = 0
                    while offset < raw.count {
                        let count = min(Frame.chunkBytes, raw.count - offset)
                        let sealed = try client.seal(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + count)]))
                        let ok = sealed.withUnsafeBytes { s in opened.withUnsafeMutableBytes { service.open(s, into: UnsafeMutableRawBufferPointer(rebasing: $0[..<count])) } }
                        guard ok else { throw ValidationError("bench checkpoint: a sealed record did not open") }
                        offset += count
                    }
                }
            }
            seconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return seconds
    }

    /// Both ends of one session, from a real job-token handshake over a socket pair.
    private static func sealPair() throws -> (client: SessionSeal, service: SessionSeal) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else {
            throw ValidationError("bench checkpoint: socketpair failed: \(Socket.errorText())")
        }
        let (dialing, accepting) = (fds[0], fds[1])
        defer { close(dialing); close(accepting) }
        let token = JobToken.generate()
        final class Box: @unchecked Sendable { var session: Result<JobHandshake.Session, Error>? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        Thread {
            box.session = Result { try JobHandshake(token: token).accept(identity: "bench service", over: .socket(accepting, deadline: Date(timeIntervalSinceNow: 10))) }
            done.signal()
        }.start()
        let client = try JobHandshake(token: token).initiate(identity: "bench client", over: .socket(dialing, deadline: Date(timeIntervalSinceNow: 10)))
        done.wait()
        return (SessionSeal(client, initiator: true), SessionSeal(try box.session!.get(), initiator: false))
    }
}
