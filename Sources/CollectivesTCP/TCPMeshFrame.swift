import Collectives
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How a frame's payload travels.
enum FrameKind: UInt32 {
    /// The payload follows the header on the socket.
    case inline = 0
    /// The payload stays in the sender's memory at `address`; the receiver copies it out
    /// (`SameHostMemory`) and answers with an `.acknowledgement`.
    case byAddress = 1
    /// "Your oldest unacknowledged by-address frame has been read": no payload.
    case acknowledgement = 2
}

/// One frame on the wire: a 32-byte header (tag, communicator id, kind, payload length,
/// sender's address of a by-address payload), then the payload when it is inline.
struct FrameHeader: Equatable {
    static let size = 32
    var tag: Int64
    var communicator: UInt32
    var kind: FrameKind = .inline
    var length: UInt64
    var address: UInt64 = 0

    var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes {
            $0.storeBytes(of: tag.littleEndian, toByteOffset: 0, as: Int64.self)
            $0.storeBytes(of: communicator.littleEndian, toByteOffset: 8, as: UInt32.self)
            $0.storeBytes(of: kind.rawValue.littleEndian, toByteOffset: 12, as: UInt32.self)
            $0.storeBytes(of: length.littleEndian, toByteOffset: 16, as: UInt64.self)
            $0.storeBytes(of: address.littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        return out
    }

    init(tag: Int64, communicator: UInt32, kind: FrameKind = .inline, length: UInt64, address: UInt64 = 0) {
        self.tag = tag
        self.communicator = communicator
        self.kind = kind
        self.length = length
        self.address = address
    }

    /// Nil when the kind is unknown (not a frame this version wrote).
    init?(_ raw: UnsafeRawBufferPointer) {
        guard let kind = FrameKind(rawValue: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 12, as: UInt32.self))) else { return nil }
        tag = Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: Int64.self))
        communicator = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        self.kind = kind
        length = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        address = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }
}

/// A send the mesh must complete: `payload` to `peer` (a world rank) as a frame with this
/// (communicator, tag). The payload must stay valid and unchanged until `transfer` returns.
struct OutgoingFrame {
    var peer: Int
    var communicator: UInt32
    var tag: Int64
    var payload: UnsafeRawBufferPointer
}

/// A receive the mesh must complete: the next frame from `peer` with this (communicator, tag),
/// whose length must equal `destination.count`. With `combine`, the payload is folded into
/// `destination` instead of copied over it: `combine(offset, bytes)` gets pieces in order, each
/// a whole number of Float32s, with their byte offset into `destination`.
struct ExpectedFrame {
    var peer: Int
    var communicator: UInt32
    var tag: Int64
    var destination: UnsafeMutableRawBufferPointer
    var combine: ((Int, UnsafeRawBufferPointer) -> Void)? = nil

    func deliver(_ payload: UnsafeRawBufferPointer) {
        if let combine { combine(0, payload) } else if payload.count > 0 { destination.copyMemory(from: payload) }
    }
}

/// Per-peer state of a frame being read.
final class FrameReader {
    var headerBytes = [UInt8](repeating: 0, count: FrameHeader.size)
    var headerFilled = 0
    var header: FrameHeader?
    var filled = 0
    var target: ExpectedFrame?
    var targetSlot: Int?
    var spill: [UInt8] = []
    /// A sealed connection's record being read (header or payload chunk, and its tag), and how much of it has come.
    var record: [UInt8] = []
    var recordFilled = 0
    /// Where a payload that is combined (not copied) lands before it is folded in: small enough
    /// to stay in cache. Allocated on first use.
    private var segmentStorage: UnsafeMutableRawBufferPointer?
    var segmentFilled = 0
    static let segmentBytes = 512 << 10

    var segment: UnsafeMutableRawBufferPointer {
        if let segmentStorage { return segmentStorage }
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.segmentBytes, alignment: 64)
        segmentStorage = storage
        return storage
    }

    deinit { segmentStorage?.deallocate() }

    func reset() {
        headerFilled = 0
        header = nil
        filled = 0
        target = nil
        targetSlot = nil
        spill = []
        segmentFilled = 0
        recordFilled = 0
    }
}
