import Collectives
import Foundation
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// Sealed connections (`parallel.tcp_seal`): the same frames as in clear, cut into records,
/// each AES-256-GCM under the connection's per-direction key and the next counter nonce
/// (`SessionSeal`): a frame header is one record (32 + 16 bytes), its inline payload follows as
/// records of `sealChunkBytes` (the last one shorter), an acknowledgement is one record. The
/// header, once opened, says how long the payload's records are, so records carry no length of
/// their own. A record is sealed only when it is its turn on the wire (so nonces follow the
/// order of the bytes), and opened into where its plaintext goes: the waiting receive, the
/// cache-sized segment a combining receive folds from, or the spill. Memory stays bounded by
/// one record per peer each way, and a large payload's records pipeline with the peer's work.
/// A record that does not open ends the transfer with `CollectiveError.tampered` naming the
/// rank it came from; that connection is dead from then on.
extension TCPMesh {
    /// Plaintext bytes per sealed payload record: as large as the segment a combining receive
    /// folds from (so an opened record is folded while it is in cache), large enough that the
    /// 16-byte tag and the per-record call cost nothing measurable.
    static let sealChunkBytes = FrameReader.segmentBytes

    /// Whether acknowledgements (in clear or sealed) wait to be written to `peer`.
    func hasControlOut(_ peer: Int) -> Bool { !controlOut[peer].isEmpty || !sealedOut[peer].isEmpty }

    // MARK: Sending

    /// Writes the record in progress to `peer`; false when its socket is full.
    private func flushSealed(_ peer: Int, _ operation: String) throws -> Bool {
        while sealedOutOffset[peer] < sealedOut[peer].count {
            let offset = sealedOutOffset[peer]
            let n = sealedOut[peer].withUnsafeBytes { send(sockets[peer], $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return false }
                throw sendFailed(peer, operation)
            }
            sealedOutOffset[peer] += n
        }
        sealedOut[peer] = []
        sealedOutOffset[peer] = 0
        return true
    }

    /// Seals the oldest queued acknowledgement to `peer` as the next record.
    private func sealControl(_ peer: Int) throws {
        sealedOut[peer] = try seals[peer]!.seal(Array(controlOut[peer].prefix(FrameHeader.size)))
        controlOut[peer].removeFirst(FrameHeader.size)
    }

    /// Writes what can go to `peer` between frames: the record in progress, then the queued
    /// acknowledgements; false if its socket is full. Callers make sure no frame is partly written.
    func writeSealedControl(_ peer: Int, _ operation: String) throws -> Bool {
        while true {
            guard try flushSealed(peer, operation) else { return false }
            if controlOut[peer].isEmpty { return true }
            try sealControl(peer)
        }
    }

    /// `writeReady` for a sealed peer: frames strictly in order, acknowledgements between them.
    func writeSealed(_ peer: Int, _ states: inout [SendProgress], _ operation: String) throws {
        while true {
            guard try flushSealed(peer, operation) else { return }
            let current = states.firstIndex { $0.frame.peer == peer && !$0.written }
            if let i = current, midFrame[peer], states[i].offset == states[i].bytes.count + states[i].payload.count {
                states[i].written = true   // its last record is out
                midFrame[peer] = false
                continue
            }
            if !midFrame[peer], !controlOut[peer].isEmpty {
                try sealControl(peer)
                continue
            }
            guard let i = current else { return }
            let headerCount = states[i].bytes.count
            if states[i].offset < headerCount {
                sealedOut[peer] = try seals[peer]!.seal(states[i].bytes)
                states[i].offset = headerCount
            } else {
                let start = states[i].offset - headerCount
                let count = min(Self.sealChunkBytes, states[i].payload.count - start)
                sealedOut[peer] = try seals[peer]!.seal(UnsafeRawBufferPointer(rebasing: states[i].payload[start..<(start + count)]))
                states[i].offset += count
            }
            midFrame[peer] = true
        }
    }

    /// Best effort, for the failure notices (`abortTag`, `waitingTag`): the frame goes at once,
    /// sealed when the connection is, and not at all when a frame to `peer` is partly written
    /// (it would break that frame, and the peer learns of the failure another way).
    func sendNotice(_ peer: Int, header: [UInt8], payload: [UInt8]) {
        var frame = header + payload
        if let seal = seals[peer] {
            guard !midFrame[peer], sealedOut[peer].isEmpty, payload.count <= Self.sealChunkBytes,
                  let head = try? seal.seal(header), let body = payload.isEmpty ? [] : try? seal.seal(payload) else { return }
            frame = head + body
        }
        _ = frame.withUnsafeBytes { send(sockets[peer], $0.baseAddress!, frame.count, Int32(MSG_NOSIGNAL)) }
    }

    // MARK: Receiving

    /// `readReady` for a sealed peer: reads record after record and opens each into its place.
    func readSealedReady(_ peer: Int, receives: [ExpectedFrame], pending: inout [Int], claimed: inout Set<Int>, _ operation: String) throws {
        let reader = readers[peer]
        if reader.record.isEmpty { reader.record = [UInt8](repeating: 0, count: Self.sealChunkBytes + SessionSeal.tagBytes) }
        while true {
            let plainCount = reader.header.map { min(Self.sealChunkBytes, Int($0.length) - reader.filled) } ?? FrameHeader.size
            let need = plainCount + SessionSeal.tagBytes
            let filled = reader.recordFilled
            let n = reader.record.withUnsafeMutableBytes { recv(sockets[peer], $0.baseAddress! + filled, need - filled, 0) }
            if try !progressed(n, peer) { return }
            reader.recordFilled += n
            guard reader.recordFilled == need else { continue }
            reader.recordFilled = 0
            guard let header = reader.header else {
                var plain = [UInt8](repeating: 0, count: FrameHeader.size)
                try plain.withUnsafeMutableBytes { try openRecord(peer, into: $0, operation) }
                let header = try plain.withUnsafeBytes { try readHeader($0, from: peer, operation) }
                guard try begin(header, from: peer, receives, &pending, &claimed, operation) else { reader.reset(); continue }
                if header.length == 0 { try complete(peer, receives, &pending, &claimed, operation) }
                continue
            }
            let at = reader.filled
            if let target = reader.target, let combine = target.combine {
                let piece = UnsafeMutableRawBufferPointer(start: reader.segment.baseAddress, count: plainCount)
                try openRecord(peer, into: piece, operation)
                combine(at, UnsafeRawBufferPointer(piece))
            } else if let target = reader.target {
                try openRecord(peer, into: UnsafeMutableRawBufferPointer(rebasing: target.destination[at..<(at + plainCount)]), operation)
            } else {
                try reader.spill.withUnsafeMutableBytes { try openRecord(peer, into: UnsafeMutableRawBufferPointer(rebasing: $0[at..<(at + plainCount)]), operation) }
            }
            reader.filled += plainCount
            if reader.filled == Int(header.length) { try complete(peer, receives, &pending, &claimed, operation) }
        }
    }

    /// Opens the record just read from `peer` into `destination` (its whole plaintext), or ends
    /// that connection: a record that does not open was tampered with on the way.
    private func openRecord(_ peer: Int, into destination: UnsafeMutableRawBufferPointer, _ operation: String) throws {
        let count = destination.count + SessionSeal.tagBytes
        let opened = readers[peer].record.withUnsafeBytes { seals[peer]!.open(UnsafeRawBufferPointer(rebasing: $0[..<count]), into: destination) }
        guard opened else {
            if closed[peer] == nil { closedOrder.append(peer) }
            closed[peer] = "a sealed frame from it failed authentication"
            throw CollectiveError.tampered(rank: peer, operation: operation)
        }
    }
}
